//! Every failure a handler can meet, and the JSON response each one becomes.
//!
//! Responses are `{"error": "..."}` with the status that tells the client what to do: 4xx for
//! its own mistakes, 503 + `Retry-After` while Redis is unreachable (never "you were logged
//! out") or the server is too busy, 507 while Redis is full (an operator problem, logged once
//! per interval), 500 only for bugs, with details in the log rather than the body.

use axum::{
    extract::Request,
    http::{header, HeaderValue, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
    Json,
};
use serde_json::json;

use crate::users::UserError;

/// Seconds to wait before retrying while Redis is unavailable.
const RETRY_AFTER_SECS: &str = "1";

#[derive(Debug, thiserror::Error)]
pub(crate) enum AppError {
    /// The request itself is wrong (bad JSON, too large, bad parameter).
    #[error("{message}")]
    BadRequest { status: StatusCode, message: String },
    /// Wrong user name or password (deliberately not saying which).
    #[error("invalid username or password")]
    BadCredentials,
    /// Too many failed logins from this address or for this user name.
    #[error("too many failed logins, retry in {retry_after} s")]
    RateLimited { retry_after: u64 },
    /// A state-changing request sent by a page of another origin (see `routes::origin`).
    #[error("cross-origin request refused")]
    CrossOrigin,
    /// Redis is unreachable or timed out.
    #[error("session store unavailable, retry shortly")]
    Unavailable(String),
    /// Redis reached `maxmemory` and refuses writes: not transient, so 507 without
    /// `Retry-After` (a 503 would invite clients and balancers to retry into the same wall).
    #[error("{}", herd_session_store::operator::STORE_FULL)]
    StoreFull(String),
    /// This worker already runs as many computations of this kind (argon2 hashes, `/heavy`
    /// loops) as it may and none freed up within the wait. 503, not 429: the server is short
    /// of capacity, this client did nothing wrong; it may retry after `retry_after` seconds.
    #[error("server busy: too many {what} at once, retry in {retry_after} s")]
    Busy { what: &'static str, retry_after: u64 },
    /// A bug or an unexpected failure.
    #[error("internal error")]
    Internal(String),
}

impl AppError {
    pub(crate) fn bad_request(status: StatusCode, message: impl Into<String>) -> Self {
        AppError::BadRequest { status, message: message.into() }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = match &self {
            AppError::BadRequest { status, .. } => *status,
            AppError::BadCredentials => StatusCode::UNAUTHORIZED,
            AppError::CrossOrigin => StatusCode::FORBIDDEN,
            AppError::RateLimited { retry_after } => {
                let body = Json(json!({ "error": self.to_string() }));
                return (StatusCode::TOO_MANY_REQUESTS, [(header::RETRY_AFTER, retry_after.to_string())], body)
                    .into_response();
            }
            AppError::Unavailable(cause) => {
                tracing::warn!(%cause, "answering 503: Redis unavailable");
                return unavailable();
            }
            AppError::StoreFull(cause) => {
                herd_session_store::operator::redis_full(cause);
                StatusCode::INSUFFICIENT_STORAGE
            }
            AppError::Busy { retry_after, .. } => {
                let body = Json(json!({ "error": self.to_string() }));
                return (StatusCode::SERVICE_UNAVAILABLE, [(header::RETRY_AFTER, retry_after.to_string())], body)
                    .into_response();
            }
            AppError::Internal(cause) => {
                tracing::error!(%cause, "answering 500");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        (status, Json(json!({ "error": self.to_string() }))).into_response()
    }
}

fn unavailable() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, RETRY_AFTER_SECS)],
        Json(json!({ "error": AppError::Unavailable(String::new()).to_string() })),
    )
        .into_response()
}

impl From<tower_sessions::session::Error> for AppError {
    fn from(err: tower_sessions::session::Error) -> Self {
        match err {
            tower_sessions::session::Error::Store(e) if herd_session_store::is_store_full(&e) => {
                AppError::StoreFull(e.to_string())
            }
            tower_sessions::session::Error::Store(e) => AppError::Unavailable(e.to_string()),
            other => AppError::Internal(other.to_string()),
        }
    }
}

impl From<herd_session_store::StoreError> for AppError {
    fn from(err: herd_session_store::StoreError) -> Self {
        if err.is_out_of_memory() {
            AppError::StoreFull(err.to_string())
        } else if err.is_unavailable() {
            AppError::Unavailable(err.to_string())
        } else {
            AppError::Internal(err.to_string())
        }
    }
}

impl From<UserError> for AppError {
    fn from(err: UserError) -> Self {
        match err {
            UserError::InvalidName | UserError::InvalidPassword => AppError::BadCredentials,
            UserError::Store(e) => AppError::from(e),
            UserError::Busy => AppError::Busy { what: "logins", retry_after: 1 },
            other => AppError::Internal(other.to_string()),
        }
    }
}

/// Marks responses that depend on the session as private to this client.
pub(crate) async fn no_store(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
