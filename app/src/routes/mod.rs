//! The HTTP routes. [`router`] builds the whole app from an [`AppState`], so tests drive it
//! in-process (`tests.rs`: `tower::ServiceExt::oneshot` on a standalone worker).
//!
//! | route | what |
//! |---|---|
//! | `GET /` | who served this request, and this session's user and visit count |
//! | `POST /login` | JSON or form `{username, password}`; a fresh session id on success |
//! | `POST /logout` | ends the session server-side (`?all=true`: every session of the user) |
//! | `GET /me` | `{user}`: the session's user, read-only |
//! | `GET /whoami` | `{pid, worker, balance, client}`, for the page's chart |
//! | `GET /stats`, `POST /stats/reset` | every worker's counters, gathered over IPC; reset broadcast (`--admin-routes`) |
//! | `GET /heavy?n=` | sum of 0..n on the blocking pool |
//! | `GET /heavy/cached?n=` | the same through the shared cache, computed once cluster-wide |
//! | `DELETE /heavy/cached?n=` | forgets it, in Redis and in every worker's local copy (`--admin-routes`) |
//! | `GET /healthz`, `GET /readyz` | liveness; readiness including Redis |
//!
//! Every `POST`/`DELETE` sent by a page of another origin is refused first ([`origin`]).

mod auth;
mod debug;
mod health;
pub(crate) mod heavy;
mod home;
pub(crate) mod origin;
mod page;
pub(crate) mod stats;
#[cfg(test)]
mod tests;

use axum::{
    extract::DefaultBodyLimit,
    handler::Handler,
    http::{header, HeaderMap},
    middleware,
    routing::{get, post},
    Router,
};
use fred::clients::Pool;
use herd_cluster::WorkerContext;
use herd_session_store::RedisSessionStore;
use tower::ServiceBuilder;
use tower_sessions::{cookie::SameSite, Expiry, SessionManagerLayer};

use std::time::Duration;

use herd_session_store::{cache::CacheLimits, Keys, StoreError};

use crate::{
    error,
    users::{
        limit::{LoginLimiter, LoginLimits},
        sessions::UserSessions,
        visits::Visits,
        HashLimit, Users,
    },
};

/// Largest request body accepted (logins are tiny; anything big is a mistake or an attack).
pub(crate) const MAX_BODY_BYTES: usize = 16 * 1024;

/// What handlers share: a cheap handle, because axum clones the state for every request (and
/// every `from_fn_with_state` middleware) and a deep clone of these clients showed up in profiles.
#[derive(Clone)]
pub(crate) struct AppState(std::sync::Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The clients, settings and counters behind [`AppState`].
pub(crate) struct Shared {
    pub(crate) users: Users,
    /// Failed-login counters shared by every worker.
    pub(crate) limiter: LoginLimiter,
    /// Every user's logins, for "log out everywhere".
    pub(crate) logins: UserSessions,
    /// The session store, for the Redis key of a session.
    pub(crate) store: RedisSessionStore,
    /// The cache shared by every worker.
    pub(crate) cache: herd_session_store::Cache,
    /// Each session's `/` visit counter.
    pub(crate) visits: Visits,
    pub(crate) pool: Pool,
    pub(crate) worker: WorkerContext,
    /// Names of the `--demo-user`s, shown as a hint on the login form.
    pub(crate) demo_users: std::sync::Arc<[String]>,
    /// This worker's request counters, reported by `GET /stats`.
    pub(crate) counters: std::sync::Arc<stats::Counters>,
    /// This worker's `/heavy` computations: their cap and limits.
    pub(crate) heavy: heavy::HeavyWork,
    /// The session cookie and which routes are served.
    pub(crate) session: SessionSettings,
    /// The app's series (store operations, cache lookups, Redis), gathered at scrape time.
    pub(crate) metrics: std::sync::Arc<crate::metrics::AppMetrics>,
}

/// Everything the routes are configured with (from the command line: `serve::app_settings`).
#[derive(Debug, Clone)]
pub(crate) struct AppSettings {
    pub(crate) keys: Keys,
    pub(crate) session: SessionSettings,
    /// Login rate limits, shared through Redis.
    pub(crate) login: LoginLimits,
    /// The argon2 cap, per worker.
    pub(crate) hashing: HashLimit,
    pub(crate) heavy: heavy::HeavyLimits,
    pub(crate) cache: CacheLimits,
    /// Names of the `--demo-user`s (their passwords stay in the primary).
    pub(crate) demo_users: std::sync::Arc<[String]>,
}

/// How the session cookie is made, and which optional routes are served.
#[derive(Debug, Clone)]
pub(crate) struct SessionSettings {
    pub(crate) cookie_name: String,
    /// Send the cookie over HTTPS only.
    pub(crate) secure: bool,
    /// Serve the `/debug/*` routes (`--debug-routes`).
    pub(crate) debug_routes: bool,
    /// Serve `POST /stats/reset` and `DELETE /heavy/cached` (`--admin-routes`); 403 otherwise.
    pub(crate) admin_routes: bool,
    /// A session ends this long after its last request (`--session-idle`).
    pub(crate) idle: Duration,
    /// A session ends this long after login (`--session-max-age`).
    pub(crate) max_age: Duration,
    /// Largest session (`--session-max-bytes`).
    pub(crate) max_bytes: usize,
    /// How long a login's old id keeps answering (`--session-grace`).
    pub(crate) grace: Duration,
    /// How revocations wait for replicas (`--redis-wait-replicas`, `--redis-wait-timeout`).
    pub(crate) replica_wait: herd_session_store::ReplicaWait,
    /// Use the stock tower-sessions-redis-store instead (the benchmark's baseline).
    pub(crate) stock_store: bool,
    /// Which other origins' pages may send state-changing requests (`--allowed-origins`).
    pub(crate) origins: origin::OriginPolicy,
}

impl SessionSettings {
    /// What the store enforces: herd's idle timeout and absolute lifetime on top of the
    /// cookie's expiry (which is the absolute lifetime too, see [`session_layer`]).
    fn limits(&self) -> herd_session_store::SessionLimits {
        herd_session_store::SessionLimits {
            idle: Some(self.idle),
            max_age: Some(self.max_age),
            max_bytes: self.max_bytes,
            grace: self.grace,
        }
    }
}

/// How long a worker trusts its local copy of a cache entry.
const CACHE_LOCAL_TTL: Duration = Duration::from_secs(30);

impl AppState {
    /// A worker's state on a connected Redis `pool`: its clients, counters (wired to the
    /// cluster's messaging) and limits. `worker` may be [`WorkerContext::standalone`] in tests.
    pub(crate) async fn build(worker: WorkerContext, pool: Pool, settings: AppSettings) -> Result<Self, StoreError> {
        let AppSettings { keys, session, login, hashing, heavy, cache, demo_users } = settings;
        let metrics = crate::metrics::AppMetrics::register(&worker.metrics, &pool);
        let store = RedisSessionStore::new(pool.clone(), keys.clone())
            .with_limits(session.limits())
            .with_replica_wait(session.replica_wait)
            .with_observer(metrics.store_observer());
        // Entries written together expire ±10 % apart; each worker answers repeats from memory
        // for a few seconds, dropped at once by an invalidation from any worker.
        let cache = herd_session_store::Cache::new(pool.clone(), keys.clone())
            .with_limits(cache)
            .with_jitter(0.1)
            .with_local_copies(CACHE_LOCAL_TTL)
            .await?;
        let counters = std::sync::Arc::new(stats::Counters::default());
        stats::serve_counters(&worker.messenger, counters.clone());
        Ok(Self(std::sync::Arc::new(Shared {
            users: Users::with_hash_limit(pool.clone(), keys.clone(), hashing),
            limiter: LoginLimiter::new(pool.clone(), keys.clone(), login),
            logins: UserSessions::new(pool.clone(), keys.clone(), session.replica_wait),
            store,
            cache,
            visits: Visits::new(pool.clone(), keys),
            pool,
            worker,
            demo_users,
            counters,
            heavy: heavy::HeavyWork::new(heavy),
            session,
            metrics,
        })))
    }
}

/// The whole app on `state`: every route and middleware, as configured by `state.session`.
pub(crate) fn router(state: AppState) -> Router {
    let settings = &state.session;
    let with_session = Router::new()
        .route("/", get(home::home))
        .route("/login", post(auth::login))
        .route("/logout", post(auth::logout))
        .route("/me", get(auth::me));
    // One `Router::layer` per stack, not one per layer: axum wraps every route in a boxed
    // service per `layer` call and clones each box on every request.
    let removal =
        std::sync::Arc::new(RemovalCookie { prefix: format!("{}=", settings.cookie_name), secure: settings.secure });
    let cookies = ServiceBuilder::new().layer(middleware::from_fn(error::no_store)).layer(middleware::map_response(
        move |response| {
            let removal = removal.clone();
            async move { removal.fix(response) }
        },
    ));
    let with_session = if settings.stock_store {
        let stock = tower_sessions_redis_store::RedisStore::new(state.pool.clone());
        let stock = crate::metrics::MeteredStore::new(stock, state.metrics.clone());
        with_session.layer(cookies.layer(session_layer(stock, settings)))
    } else {
        // Merged saves, gap-free login, typed 503/413 when the store fails.
        let scope = state.store.scope_layer();
        // The scope is a task-local of the request, so the metered wrapper keeps its semantics.
        let store = crate::metrics::MeteredStore::new(state.store.clone(), state.metrics.clone());
        with_session.layer(cookies.layer(scope).layer(session_layer(store, settings)))
    };
    let router = if settings.debug_routes { debug::routes() } else { Router::new() };
    // Anonymous state changes: 403 unless `--admin-routes`.
    let admin = middleware::from_fn_with_state(settings.admin_routes, require_admin);
    router
        .route("/whoami", get(home::whoami))
        .route("/stats", get(stats::stats))
        .route("/stats/reset", post(stats::reset.layer(admin.clone())))
        .route("/heavy", get(heavy::heavy))
        .route("/heavy/cached", get(heavy::heavy_cached).delete(heavy::forget_cached.layer(admin)))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .merge(with_session)
        .fallback(|| async { error::AppError::bad_request(axum::http::StatusCode::NOT_FOUND, "no such route") })
        .layer(
            ServiceBuilder::new()
                .layer(middleware::from_fn_with_state(state.clone(), stats::count))
                .layer(middleware::from_fn_with_state(settings.origins.clone(), origin::check))
                .layer(DefaultBodyLimit::max(MAX_BODY_BYTES)),
        )
        .with_state(state)
}

/// Lets a request through to an admin route only when `--admin-routes` is on: they change state
/// for every client, and anyone who reaches the port could call them.
async fn require_admin(
    axum::extract::State(enabled): axum::extract::State<bool>,
    request: axum::extract::Request,
    next: middleware::Next,
) -> axum::response::Response {
    if enabled {
        return next.run(request).await;
    }
    let refusal = "this route changes state for every client: it is served only with --admin-routes \
                   (operators: `herd ctl broadcast '{\"type\":\"reset-stats\"}'`)";
    axum::response::IntoResponse::into_response(error::AppError::bad_request(
        axum::http::StatusCode::FORBIDDEN,
        refusal,
    ))
}

/// The session cookie: HttpOnly, SameSite=Lax, Secure unless turned off. The store ends
/// sessions (idle timeout, absolute lifetime); the cookie only has to live as long as a session
/// can, so it is refreshed on writes, not on every read.
fn session_layer<S: tower_sessions::SessionStore + Clone>(
    store: S,
    settings: &SessionSettings,
) -> SessionManagerLayer<S> {
    let cookie_lifetime = time::Duration::try_from(settings.max_age).unwrap_or(time::Duration::weeks(1));
    SessionManagerLayer::new(store)
        .with_name(settings.cookie_name.clone())
        .with_secure(settings.secure)
        .with_http_only(true)
        .with_same_site(SameSite::Lax)
        .with_expiry(Expiry::OnInactivity(cookie_lifetime))
}

/// tower-sessions 0.14 sends the cookie that deletes the session on logout without `HttpOnly`,
/// `SameSite` or `Secure` (fixed upstream after 0.14), which breaks `__Host-` cookie names and
/// lets a plain-HTTP response carry it. Give the removal cookie the same flags as the session
/// cookie.
struct RemovalCookie {
    /// `name=`, what the session cookie's header value starts with.
    prefix: String,
    secure: bool,
}

impl RemovalCookie {
    fn fix(&self, mut response: axum::response::Response) -> axum::response::Response {
        let mut fixed = Vec::new();
        for value in response.headers().get_all(header::SET_COOKIE) {
            let Ok(text) = value.to_str() else { continue };
            let removal = text.starts_with(&self.prefix) && text.contains("Max-Age=0");
            let mut cookie = text.to_owned();
            if removal {
                for (flag, wanted) in [("HttpOnly", true), ("SameSite=Lax", true), ("Secure", self.secure)] {
                    if wanted && !cookie.split(';').any(|part| part.trim() == flag) {
                        cookie.push_str("; ");
                        cookie.push_str(flag);
                    }
                }
            }
            fixed.push(cookie);
        }
        if fixed.is_empty() {
            return response;
        }
        response.headers_mut().remove(header::SET_COOKIE);
        for cookie in fixed {
            if let Ok(value) = header::HeaderValue::from_str(&cookie) {
                response.headers_mut().append(header::SET_COOKIE, value);
            }
        }
        response
    }
}

/// True when the client asked for HTML (a browser navigating), not JSON.
fn wants_html(headers: &HeaderMap) -> bool {
    headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|accept| accept.contains("text/html"))
}
