//! What the store does that the `SessionStore` trait does not show, for an app's metrics: a
//! load that also extended the idle timeout (the touch), and a login that retired the session
//! it replaced (the rotation). Register a [`StoreObserver`] with
//! [`crate::RedisSessionStore::with_observer`]; it is called once per event, on the request's
//! task, so it must be cheap (an atomic increment).

use std::{fmt, sync::Arc};

/// One thing the store did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreEvent {
    /// A load extended the session's idle timeout; `ok` is false when the touch failed (the
    /// load still stood, the idle window is just shorter).
    Touch {
        /// The touch script ran.
        ok: bool,
    },
    /// A login (`cycle_id`) retired the session it replaced.
    Rotate,
}

/// Called for every [`StoreEvent`].
#[derive(Clone)]
pub struct StoreObserver(Arc<dyn Fn(StoreEvent) + Send + Sync>);

impl StoreObserver {
    /// An observer that calls `f`.
    pub fn new(f: impl Fn(StoreEvent) + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    pub(crate) fn notify(&self, event: StoreEvent) {
        (self.0)(event);
    }
}

impl fmt::Debug for StoreObserver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StoreObserver")
    }
}
