use axum::{
    extract::{rejection::QueryRejection, ConnectInfo, Query, State},
    http::{header, HeaderMap, HeaderValue, StatusCode, Version},
    response::{Html, IntoResponse, Response},
    Extension, Json,
};
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use tower_sessions::Session;

use super::{
    auth::{SINCE_KEY, USER_KEY},
    page::{self, Notice, PageView},
    wants_html, AppState,
};
use crate::error::AppError;

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

#[derive(Deserialize)]
pub(super) struct PageQuery {
    error: Option<String>,
}

/// The logged-in user, the updated visit count and the session's age in seconds. Only
/// logged-in sessions count visits, so anonymous traffic never creates a Redis key.
async fn visit(state: &AppState, session: &Session) -> Result<Option<(String, u64, u64)>, AppError> {
    let Some(user) = session.get::<String>(USER_KEY).await? else {
        return Ok(None);
    };
    let Some(id) = session.id() else {
        return Ok(None);
    };
    // Counted atomically in the user's login index: concurrent requests of one session lose nothing.
    // The record itself is not written: loading it extended its idle timeout.
    let visits = state.visits.count(&user, &state.store.key(&id)).await?;
    let since = session.get::<i64>(SINCE_KEY).await?.unwrap_or_else(now);
    Ok(Some((user, visits, u64::try_from(now() - since).unwrap_or(0))))
}

pub(super) fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Who served this request, and the session's state: JSON, or the demo page for browsers.
pub(super) async fn home(
    State(state): State<AppState>,
    headers: HeaderMap,
    version: Version,
    query: Result<Query<PageQuery>, QueryRejection>,
    session: Session,
) -> Response {
    let visited = visit(&state, &session).await;
    let w = &state.worker;
    if !wants_html(&headers) {
        return match visited {
            Ok(visit) => {
                let (user, visits) = visit.map(|(user, visits, _)| (user, visits)).unzip();
                Json(Home {
                    message: format!("Hello from herd worker {} (pid {})", w.slot, w.pid),
                    pid: w.pid,
                    worker: w.slot,
                    balance: w.balance.as_str(),
                    uptime_s: w.started.elapsed().as_secs(),
                    user,
                    visits,
                })
                .into_response()
            }
            Err(err) => err.into_response(),
        };
    }

    let requested = query.ok().and_then(|Query(q)| q.error).and_then(|code| Notice::from_code(&code));
    let (status, visit, notice) = match visited {
        Ok(visit) => (StatusCode::OK, visit, requested),
        Err(err) => {
            let (status, notice) = Notice::of(&err);
            (status, None, Some(notice))
        }
    };
    let view = PageView {
        slot: w.slot,
        pid: w.pid,
        balance: w.balance,
        uptime_s: w.started.elapsed().as_secs(),
        session: visit.as_ref().map(|(user, visits, age)| (user.as_str(), *visits, *age)),
        demo_users: &state.demo_users,
        notice,
    };
    let mut response = (status, Html(page::render(&view))).into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response = crate::error::service_unavailable(response, crate::error::RETRY_AFTER_SECS);
    }
    fresh_connection_per_page(&state, version, &mut response);
    response
}

/// `{pid, worker, balance, client}` for the page's "hit it 20 times" chart; `client` is the
/// address herd sees the request come from (behind a balancer: the one its PROXY header or
/// trusted forwarding header named), `null` when unknown.
pub(super) async fn whoami(
    State(state): State<AppState>,
    version: Version,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
) -> Response {
    let w = &state.worker;
    let client = connect.map(|Extension(ConnectInfo(client))| client.ip().to_string());
    let body = serde_json::json!({ "pid": w.pid, "worker": w.slot, "balance": w.balance.as_str(), "client": client });
    let mut response = Json(body).into_response();
    fresh_connection_per_page(&state, version, &mut response);
    response
}

/// A browser reuses its keep-alive connection for reloads, which would pin every reload to one
/// worker and hide what the demo is about. Outside sticky mode, ask it to open a new connection
/// for the next request, so the dispatcher (or the kernel) chooses again.
fn fresh_connection_per_page(state: &AppState, version: Version, response: &mut Response) {
    if state.worker.balance != herd_cluster::Balance::IpHash && version <= Version::HTTP_11 {
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
}
