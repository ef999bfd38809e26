use axum::{extract::State, Json};
use serde::Serialize;
use tower_sessions::Session;

use super::{auth::USER_KEY, AppState};
use crate::error::AppError;

/// Session key of the number of `GET /` requests this session made.
pub(super) const VISITS_KEY: &str = "visits";

#[derive(Serialize)]
pub(super) struct Home {
    message: String,
    pid: u32,
    worker: usize,
    balance: &'static str,
    uptime_s: u64,
    user: Option<String>,
    visits: Option<u64>,
}

/// Who served this request, and the session's state. Only logged-in sessions count visits, so
/// anonymous traffic never creates a Redis key.
pub(super) async fn home(State(state): State<AppState>, session: Session) -> Result<Json<Home>, AppError> {
    let user: Option<String> = session.get(USER_KEY).await?;
    let visits = match user {
        Some(_) => {
            let visits = session.get::<u64>(VISITS_KEY).await?.unwrap_or(0) + 1;
            session.insert(VISITS_KEY, visits).await?;
            Some(visits)
        }
        None => None,
    };
    let w = &state.worker;
    Ok(Json(Home {
        message: format!("Hello from herd worker {} (pid {})", w.slot, w.pid),
        pid: w.pid,
        worker: w.slot,
        balance: w.balance.as_str(),
        uptime_s: w.started.elapsed().as_secs(),
        user,
        visits,
    }))
}
