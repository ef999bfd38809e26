//! What the store remembers about one request: [`SessionScopeLayer`].
//!
//! `tower_sessions::SessionStore` sees records, not requests: `save` gets the whole record
//! with no way to tell what this request changed, and `cycle_id` deletes the old session before
//! the new one exists. Wrapped around `SessionManagerLayer`, this layer gives the store a
//! per-request memory (a tokio task-local, so nothing leaks between requests) that makes three
//! things right:
//!
//! - **Merged saves.** The data as loaded is kept, so a save writes only the names this request
//!   set or removed. Two concurrent requests that change different names both keep their
//!   change; two that change the same name: the later save wins for that name.
//! - **Login without a gap.** A `cycle_id` (log in) does not delete the old session: when the
//!   new one has been written, the old one is *retired*, readable for a grace period for the
//!   requests already in flight with the old cookie. If the request fails (5xx) the rotation is
//!   undone: the new record goes, the old one is restored. A plain `flush`/`delete` (log out)
//!   deletes for real at the end of a successful request, together with the sessions that
//!   logins replaced on the way to this one and whose grace still runs (the new record's
//!   `:replaced` link names its predecessor), so no earlier cookie of the login outlives it.
//! - **Typed failures.** tower-sessions answers a failed save with an empty 500. The layer
//!   knows why the store failed and answers 503 + `Retry-After` (Redis unreachable or slow),
//!   507 (Redis is full: `maxmemory` reached, an operator must act) or 413 (the session would
//!   exceed its size cap), with a JSON body.
//!
//! Without the layer the store still works, with the stock semantics: a save replaces the whole
//! record (last write wins) and a delete is immediate.

use std::{
    cell::RefCell,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use http::{header, HeaderValue, Request, Response, StatusCode};
use tower::{Layer, Service};
use tower_sessions::session::Id;

use crate::{store::Base, RedisSessionStore, StoreError};

tokio::task_local! {
    static SCOPE: RefCell<RequestState>;
}

/// What happened to sessions during one request.
#[derive(Default)]
pub(crate) struct RequestState {
    /// Each session's data as this request loaded (or last wrote) it: the base of a merge. A
    /// list, not a map: a request almost always has one session, and hashing its id twice cost
    /// more than scanning.
    loaded: Vec<(Id, Base)>,
    /// Sessions deleted by this request: gone for real once it succeeds.
    pub(crate) deleted: Vec<Id>,
    /// A login: the old session retired in favour of the new one.
    pub(crate) rotation: Option<(Id, Id)>,
    /// Why the store failed, if it did.
    pub(crate) failure: Option<Failure>,
}

impl RequestState {
    /// Keeps `base` as what session `id` holds in Redis now.
    pub(crate) fn remember(&mut self, id: Id, base: Base) {
        match self.loaded.iter_mut().find(|(known, _)| *known == id) {
            Some(entry) => entry.1 = base,
            None => self.loaded.push((id, base)),
        }
    }

    /// What session `id` held when this request last read or wrote it.
    pub(crate) fn take_base(&mut self, id: &Id) -> Option<Base> {
        let at = self.loaded.iter().position(|(known, _)| known == id)?;
        Some(self.loaded.swap_remove(at).1)
    }

    /// Nothing is left to do once the response is known: no deletion, login or failure.
    fn is_settled(&self) -> bool {
        self.deleted.is_empty() && self.rotation.is_none() && self.failure.is_none()
    }
}

/// Why a store operation failed, as far as the client is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    Unavailable,
    /// Redis reached `maxmemory`: 507, not "retry shortly".
    StoreFull,
    TooLarge {
        limit: usize,
    },
}

impl Failure {
    pub(crate) fn of(err: &StoreError) -> Option<Self> {
        match err {
            StoreError::TooLarge { limit, .. } => Some(Failure::TooLarge { limit: *limit }),
            StoreError::OutOfMemory(_) => Some(Failure::StoreFull),
            err if err.is_unavailable() => Some(Failure::Unavailable),
            _ => None,
        }
    }

    fn response<B: From<String>>(self) -> Response<B> {
        let (status, message) = match self {
            Failure::Unavailable => {
                (StatusCode::SERVICE_UNAVAILABLE, "session store unavailable, retry shortly".to_owned())
            }
            Failure::StoreFull => {
                crate::operator::redis_full(&"a session could not be saved");
                (StatusCode::INSUFFICIENT_STORAGE, crate::operator::STORE_FULL.to_owned())
            }
            Failure::TooLarge { limit } => {
                (StatusCode::PAYLOAD_TOO_LARGE, format!("session data would exceed {limit} bytes"))
            }
        };
        let body = serde_json::json!({ "error": message }).to_string();
        let mut response = Response::new(B::from(body));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// Runs `f` on the current request's state; `None` outside a [`SessionScopeLayer`].
pub(crate) fn with<R>(f: impl FnOnce(&mut RequestState) -> R) -> Option<R> {
    SCOPE.try_with(|state| f(&mut state.borrow_mut())).ok()
}

/// Gives [`RedisSessionStore`] a memory of the current request. Put it *outside*
/// `SessionManagerLayer` (added after it with `Router::layer`):
///
/// ```ignore
/// router
///     .layer(SessionManagerLayer::new(store.clone()))
///     .layer(store.scope_layer())
/// ```
#[derive(Debug, Clone)]
pub struct SessionScopeLayer {
    store: Arc<RedisSessionStore>,
}

impl SessionScopeLayer {
    pub(crate) fn new(store: RedisSessionStore) -> Self {
        Self { store: Arc::new(store) }
    }
}

impl<S> Layer<S> for SessionScopeLayer {
    type Service = SessionScope<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SessionScope { inner, store: self.store.clone() }
    }
}

/// The service of [`SessionScopeLayer`].
#[derive(Debug, Clone)]
pub struct SessionScope<S> {
    inner: S,
    /// Shared: axum clones the service for every request, and the store is only needed when a
    /// request leaves something to settle.
    store: Arc<RedisSessionStore>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for SessionScope<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    ReqBody: Send + 'static,
    ResBody: From<String> + Send,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // Called here, not inside the future, so the inner service needs no clone per request.
        // The scope covers the inner future, which is where tower-sessions uses the store.
        let response = self.inner.call(request);
        let store = self.store.clone();
        Box::pin(SCOPE.scope(RefCell::new(RequestState::default()), async move {
            let response = response.await?;
            let state = with(std::mem::take).unwrap_or_default();
            if state.is_settled() {
                return Ok(response);
            }
            // Boxed: its Redis futures are large, and inlined they made every request's future
            // (moved three times on the way into the runtime) kilobytes bigger for work that
            // only logins, logouts and failures need.
            Ok(Box::pin(finish(&store, state, response)).await)
        }))
    }
}

/// Settles what the request did to sessions, now that its outcome is known.
async fn finish<B: From<String>>(store: &RedisSessionStore, state: RequestState, response: Response<B>) -> Response<B> {
    if response.status().is_server_error() {
        // A failed request changes nothing: tower-sessions does not save it and sends no new
        // cookie, so the client still holds the old id, which must still work.
        if let Some((old, new)) = state.rotation {
            if let Err(err) = store.undo_rotation(&old, &new).await {
                tracing::warn!(error = %err, "could not undo a failed login's session rotation");
            }
        }
    } else {
        for id in &state.deleted {
            if let Err(err) = store.delete_now(id).await {
                // The client was about to be told it is logged out: it is not.
                tracing::warn!(error = %err, "could not delete an ended session");
                return Failure::of(&err).unwrap_or(Failure::Unavailable).response();
            }
        }
    }
    match state.failure {
        Some(failure) if response.status().is_server_error() => {
            // A full Redis is reported by the response itself, once per interval.
            if failure != Failure::StoreFull {
                tracing::warn!(?failure, "session store failed; answering with the reason");
            }
            failure.response()
        }
        _ => response,
    }
}
