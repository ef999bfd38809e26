use std::net::SocketAddr;

use axum::{
    extract::{ConnectInfo, FromRequest, Request, State},
    http::header,
    Form, Json,
};
use serde::Deserialize;
use serde_json::{json, Value};
use tower_sessions::Session;

use super::{home::VISITS_KEY, AppState};
use crate::error::AppError;

/// Session key of the logged-in user's name.
pub(super) const USER_KEY: &str = "user";

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
/// is worthless: session fixation) holding only this login.
pub(super) async fn login(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    session: Session,
    creds: Credentials,
) -> Result<Json<Value>, AppError> {
    if !state.users.verify(&creds.username, &creds.password).await? {
        tracing::info!(user = %creds.username, client = %client.ip(), "failed login");
        return Err(AppError::BadCredentials);
    }
    session.cycle_id().await?;
    session.clear().await;
    session.insert(USER_KEY, &creds.username).await?;
    session.insert(VISITS_KEY, 0u64).await?;
    tracing::info!(user = %creds.username, client = %client.ip(), "login");
    Ok(Json(json!({ "user": creds.username })))
}

/// Deletes the session from Redis; the old cookie is worthless afterwards.
pub(super) async fn logout(session: Session) -> Result<Json<Value>, AppError> {
    session.flush().await?;
    Ok(Json(json!({ "user": null })))
}
