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

/// Seconds to wait before retrying a 503 that has no better estimate (Redis unavailable, a
/// hash slot busy).
pub(crate) const RETRY_AFTER_SECS: u64 = 1;

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
                StatusCode::SERVICE_UNAVAILABLE
            }
            AppError::StoreFull(cause) => {
                herd_session_store::operator::redis_full(cause);
                StatusCode::INSUFFICIENT_STORAGE
            }
            AppError::Busy { .. } => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Internal(cause) => {
                tracing::error!(%cause, "answering 500");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        let retry_after = match &self {
            AppError::Busy { retry_after, .. } => *retry_after,
            _ => RETRY_AFTER_SECS,
        };
        let response = (status, Json(json!({ "error": self.to_string() }))).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            return service_unavailable(response, retry_after);
        }
        response
    }
}

/// Makes `response` a `503` that asks the client to come back in `retry_after` seconds: every
/// 503 the app answers (JSON errors and HTML pages alike) goes through here.
pub(crate) fn service_unavailable(mut response: Response, retry_after: u64) -> Response {
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
    response
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
            UserError::Busy => AppError::Busy { what: "logins", retry_after: RETRY_AFTER_SECS },
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

#[cfg(test)]
mod tests {
    use super::*;

    fn retry_after(error: AppError) -> (StatusCode, Option<String>) {
        let response = error.into_response();
        let header = response.headers().get(header::RETRY_AFTER).and_then(|v| v.to_str().ok()).map(str::to_owned);
        (response.status(), header)
    }

    #[test]
    fn every_503_asks_the_client_to_retry() {
        let one = Some(RETRY_AFTER_SECS.to_string());
        assert_eq!(retry_after(AppError::Unavailable("down".into())), (StatusCode::SERVICE_UNAVAILABLE, one.clone()));
        assert_eq!(
            retry_after(AppError::Busy { what: "heavy computations", retry_after: 3 }),
            (StatusCode::SERVICE_UNAVAILABLE, Some("3".into()))
        );
        assert_eq!(
            retry_after(AppError::bad_request(StatusCode::SERVICE_UNAVAILABLE, "cannot gather")),
            (StatusCode::SERVICE_UNAVAILABLE, one)
        );
        assert_eq!(retry_after(AppError::StoreFull("oom".into())), (StatusCode::INSUFFICIENT_STORAGE, None));
        assert_eq!(retry_after(AppError::Internal("bug".into())), (StatusCode::INTERNAL_SERVER_ERROR, None));
    }
}
