use std::net::SocketAddr;

use axum::{
    extract::{rejection::QueryRejection, ConnectInfo, FromRequest, Query, Request, State},
    http::{header, HeaderMap},
    response::{IntoResponse, Redirect, Response},
    Form, Json,
};
use serde::Deserialize;
use serde_json::{json, Value};
use tower_sessions::Session;

use super::{home::now, page::Notice, wants_html, AppState};
use crate::error::AppError;

/// Session key of the logged-in user's name.
pub(super) const USER_KEY: &str = "user";
/// Session key of the login time (unix seconds).
pub(super) const SINCE_KEY: &str = "since";

/// `{username, password}` from a JSON body or an HTML form.
#[derive(Deserialize)]
pub(super) struct Credentials {
    username: String,
    password: String,
}

impl<S: Send + Sync> FromRequest<S> for Credentials {
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, AppError> {
        let is_form = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("application/x-www-form-urlencoded"));
        if is_form {
            let Form(creds) = Form::<Credentials>::from_request(req, state)
                .await
                .map_err(|r| AppError::bad_request(r.status(), r.body_text()))?;
            Ok(creds)
        } else {
            let Json(creds) = Json::<Credentials>::from_request(req, state)
                .await
                .map_err(|r| AppError::bad_request(r.status(), r.body_text()))?;
            Ok(creds)
        }
    }
}

/// Checks the password, then gives the client a new session id (so an id planted before login
/// is worthless: session fixation) holding only this login. Browsers get redirected back to
/// the page (with a message on failure); API clients get JSON.
pub(super) async fn login(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    session: Session,
    creds: Result<Credentials, AppError>,
) -> Response {
    let result = async {
        let creds = creds?;
        // Malformed names cost nothing to refuse and must not become counter keys.
        crate::users::validate(&creds.username, &creds.password)?;
        // Counted before the password is checked, so concurrent guesses cannot all pass.
        let attempt = match state.limiter.admit(client.ip(), &creds.username).await? {
            Ok(attempt) => attempt,
            Err(retry_after) => {
                tracing::warn!(user = %creds.username, client = %client.ip(), "login refused: too many attempts");
                return Err(AppError::RateLimited { retry_after });
            }
        };
        match state.users.verify(&creds.username, &creds.password).await {
            Ok(true) => state.limiter.succeeded(attempt).await?,
            Ok(false) => {
                tracing::info!(user = %creds.username, client = %client.ip(), "failed login");
                state.limiter.failed(attempt);
                return Err(AppError::BadCredentials);
            }
            Err(err) => {
                // Not checked (busy, or Redis failed): it counts against no budget.
                if let Err(give_back) = state.limiter.abandoned(attempt).await {
                    tracing::warn!(error = %give_back, "could not give back an unchecked login attempt");
                }
                return Err(err.into());
            }
        }
        session.cycle_id().await?;
        session.clear().await;
        session.insert(USER_KEY, &creds.username).await?;
        session.insert(SINCE_KEY, now()).await?;
        // Saving now gives the session its new id, which the user's login index records. The
        // old session is retired only now that the new one exists, and comes back if anything
        // below fails (see herd_session_store::scope).
        session.save().await?;
        if let Some(id) = session.id() {
            let key = state.store.key(&id);
            state.logins.add(&creds.username, &key).await?;
        }
        tracing::info!(user = %creds.username, client = %client.ip(), "login");
        Ok(creds.username)
    }
    .await;
    match (wants_html(&headers), result) {
        (false, Ok(user)) => Json(json!({ "user": user })).into_response(),
        (false, Err(err)) => err.into_response(),
        (true, Ok(_)) => Redirect::to("/").into_response(),
        (true, Err(err)) => {
            let (_, notice) = Notice::of(&err);
            Redirect::to(&format!("/?error={}", notice.code())).into_response()
        }
    }
}

#[derive(Deserialize)]
pub(super) struct LogoutQuery {
    #[serde(default)]
    all: bool,
}

/// Deletes the session from Redis; the old cookie is worthless afterwards. With `?all=true`,
/// every session of the user, on every device, ends too.
pub(super) async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<LogoutQuery>, QueryRejection>,
    session: Session,
) -> Response {
    let all = query.map(|Query(q)| q.all).unwrap_or(false);
    let result = async {
        let user: Option<String> = session.get(USER_KEY).await?;
        let key = session.id().map(|id| state.store.key(&id));
        session.flush().await?;
        let mut ended = 0;
        if let (Some(user), Some(key)) = (&user, &key) {
            // This session ends when the response is sent (and its visit count with it);
            // count only the others.
            state.logins.remove(user, key).await?;
            if all {
                ended = state.logins.end_all(user).await?;
                tracing::info!(user = %user, ended, "logged out everywhere");
            }
        }
        Ok::<_, AppError>(ended)
    }
    .await;
    match (wants_html(&headers), result) {
        (false, Ok(ended)) => Json(json!({ "user": null, "ended_elsewhere": ended })).into_response(),
        (false, Err(err)) => err.into_response(),
        (true, Ok(_)) => Redirect::to("/").into_response(),
        (true, Err(err)) => Redirect::to(&format!("/?error={}", Notice::of(&err).1.code())).into_response(),
    }
}

/// The session's user, without touching anything else: one Redis read.
pub(super) async fn me(session: Session) -> Result<Json<Value>, AppError> {
    let user: Option<String> = session.get(USER_KEY).await?;
    Ok(Json(json!({ "user": user })))
}
