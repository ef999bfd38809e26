//! A tiny many-waiter stop signal (mini-redis's `Shutdown`, on a `watch`) that also says why:
//! the reason is the [`DrainMode`] the worker then drains in, ordered so that a stronger
//! reason overrides a weaker one already given.

use tokio::sync::watch;

use crate::drain::DrainMode;

/// Fires the signal. Cheap to clone; firing again only ever strengthens the reason.
#[derive(Clone)]
pub(crate) struct Trigger(watch::Sender<Option<DrainMode>>);

/// Waits for the signal. Once fired it stays fired.
#[derive(Clone)]
pub(crate) struct Signal(watch::Receiver<Option<DrainMode>>);

pub(crate) fn channel() -> (Trigger, Signal) {
    let (tx, rx) = watch::channel(None);
    (Trigger(tx), Signal(rx))
}

impl Trigger {
    pub(crate) fn fire(&self, stop: DrainMode) {
        self.0.send_if_modified(|current| {
            let stronger = current.is_none_or(|c| stop > c);
            if stronger {
                *current = Some(stop);
            }
            stronger
        });
    }
}

impl Signal {
    /// The reason, once fired.
    pub(crate) fn fired(&self) -> Option<DrainMode> {
        *self.0.borrow()
    }

    /// Resolves once the trigger fired (immediately if it already has) with the reason at that
    /// moment. If every trigger is dropped without firing, it never resolves.
    pub(crate) async fn wait(&mut self) -> DrainMode {
        let fired = self.0.wait_for(Option::is_some).await.map(|stop| *stop);
        match fired {
            Ok(stop) => stop.unwrap_or(DrainMode::Shutdown),
            Err(_) => std::future::pending().await,
        }
    }

    /// Resolves whenever the reason changes after the first firing (e.g. a retiring worker told
    /// to shut down).
    pub(crate) async fn changed(&mut self) -> Option<DrainMode> {
        match self.0.changed().await {
            Ok(()) => *self.0.borrow_and_update(),
            Err(_) => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reasons_only_get_stronger() {
        let (trigger, mut signal) = channel();
        assert_eq!(signal.fired(), None);
        trigger.fire(DrainMode::Retire);
        assert_eq!(signal.wait().await, DrainMode::Retire);
        trigger.fire(DrainMode::Shutdown);
        trigger.fire(DrainMode::Retire);
        assert_eq!(signal.fired(), Some(DrainMode::Shutdown));
    }
}
