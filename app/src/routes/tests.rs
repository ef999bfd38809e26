//! The routes driven in-process: the router a worker serves, built from the same flags, on a
//! [`WorkerContext::standalone`] and a private `redis-server`, called with
//! `tower::ServiceExt::oneshot`. What needs real processes (workers, the primary, sockets,
//! dispatch) stays in the end-to-end suite (tests/tests/*.rs).

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use axum::{
    body::Body,
    extract::ConnectInfo,
    http::{header, HeaderMap, Method, Request, StatusCode},
    Router,
};
use clap::Parser;
use herd_cluster::WorkerContext;
use herd_e2e::RedisServer;
use serde_json::{json, Value};
use tower::ServiceExt;

use super::{router, AppState, MAX_BODY_BYTES};
use crate::cli::{Cli, Command};

/// The slot the test worker pretends to fill (not 0, so a default cannot pass for it).
const SLOT: usize = 2;

/// The app on `redis` with `flags` (as `herd serve` would be given them), and a client that
/// keeps the session cookie like a browser.
struct App {
    router: Router,
    state: AppState,
    /// The session cookie (`name=value`) from the last response that set one.
    cookie: Option<String>,
    /// Where requests claim to come from (the login limits count per client address).
    client: SocketAddr,
}

/// One answer, its body read.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    fn header(&self, name: header::HeaderName) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts the status and that the body is `{"error": "..."}`.
    fn assert_error(&self, status: StatusCode) {
        assert_eq!(self.status, status, "body: {}", self.body);
        assert!(self.json()["error"].as_str().is_some_and(|e| !e.is_empty()), "{}", self.body);
    }
}

impl App {
    async fn start(redis: &RedisServer, flags: &[&str]) -> Self {
        let url = redis.url();
        let argv = ["herd", "serve", "--redis-url", &url].into_iter().chain(flags.iter().copied());
        let Command::Serve(args) = Cli::try_parse_from(argv).expect("flags parse").command else {
            panic!("not `serve`");
        };
        let settings = crate::serve::app_settings(&args, vec!["alice".to_owned()].into()).expect("valid settings");
        let pool = herd_session_store::connect(&args.redis.config(url)).await.expect("Redis answers");
        let state = AppState::build(WorkerContext::standalone(SLOT), pool, settings).await.expect("app state");
        App { router: router(state.clone()), state, cookie: None, client: ([127, 0, 0, 1], 40000).into() }
    }

    async fn send(&mut self, method: Method, uri: &str, headers: &[(&str, &str)], body: impl Into<Body>) -> Answer {
        let mut request = Request::builder().method(method).uri(uri).header(header::HOST, "herd.test");
        if let Some(cookie) = &self.cookie {
            request = request.header(header::COOKIE, cookie);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let mut request = request.body(body.into()).expect("a valid request");
        // What `into_make_service_with_connect_info` gives a served router.
        request.extensions_mut().insert(ConnectInfo(self.client));
        let answer = read(self.router.clone().oneshot(request).await.expect("the router is infallible")).await;
        for set in answer.headers.get_all(header::SET_COOKIE) {
            let set = set.to_str().expect("ASCII cookie");
            if let Some(pair) = set.split(';').next().filter(|pair| pair.starts_with("herd_session=")) {
                self.cookie = (!set.contains("Max-Age=0")).then(|| pair.to_owned());
            }
        }
        answer
    }

    async fn get(&mut self, uri: &str) -> Answer {
        self.send(Method::GET, uri, &[], Body::empty()).await
    }

    async fn post_json(&mut self, uri: &str, body: &str) -> Answer {
        self.send(Method::POST, uri, &[("content-type", "application/json")], body.to_owned()).await
    }

    async fn login(&mut self, user: &str, password: &str) -> Answer {
        self.post_json("/login", &json!({ "username": user, "password": password }).to_string()).await
    }

    /// Another browser on the same worker: no cookie yet.
    fn other_browser(&self) -> App {
        App { router: self.router.clone(), state: self.state.clone(), cookie: None, client: self.client }
    }

    /// Creates a user directly in Redis (one argon2 hash).
    async fn add_user(&self, user: &str, password: &str) {
        self.state.users.set_password(user, password).await.expect("user created");
    }
}

/// `GET uri` without cookies, as a `'static` future (to spawn, or to poll again and again).
fn call(router: &Router, uri: &str) -> impl std::future::Future<Output = Answer> + Send + 'static {
    let request = Request::get(uri).body(Body::empty()).expect("a valid request");
    let router = router.clone();
    async move {
        let response = router.oneshot(request).await.expect("the router is infallible");
        read(response).await
    }
}

async fn read(response: axum::response::Response) -> Answer {
    let (parts, body) = response.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.expect("body");
    Answer { status: parts.status, headers: parts.headers, body: String::from_utf8_lossy(&body).into_owned() }
}

/// Polls `check` until it returns `Some`, or panics after `timeout`.
async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn health_and_home_say_which_worker_answered() {
    let redis = RedisServer::start();
    let mut app = App::start(&redis, &[]).await;
    let health = app.get("/healthz").await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.json(), json!({ "status": "ok", "pid": std::process::id(), "worker": SLOT }));
    assert_eq!(app.get("/readyz").await.json()["redis"], "ok");

    let home = app.get("/").await;
    assert_eq!(home.status, StatusCode::OK);
    let body = home.json();
    assert_eq!((body["worker"].as_u64(), body["balance"].as_str()), (Some(SLOT as u64), Some("shared")));
    assert_eq!((&body["user"], &body["visits"]), (&Value::Null, &Value::Null), "anonymous: {body}");
    assert!(home.header(header::SET_COOKIE).is_none(), "anonymous requests create no session");
    assert_eq!(home.header(header::CACHE_CONTROL), Some("no-store"));

    let page = app.send(Method::GET, "/?error=bad-login", &[("accept", "text/html")], Body::empty()).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.header(header::CONTENT_TYPE).is_some_and(|ct| ct.starts_with("text/html")));
    assert!(page.body.contains("Wrong user name or password."), "the notice is shown");
    assert!(page.body.contains("alice"), "the demo user is hinted");
    assert_eq!(page.header(header::CONNECTION), Some("close"), "outside ip-hash, each page reconnects");
    let whoami = app.get("/whoami").await;
    assert_eq!(
        whoami.json(),
        json!({ "pid": std::process::id(), "worker": SLOT, "balance": "shared", "client": "127.0.0.1" })
    );
    assert_eq!(whoami.header(header::CONNECTION), Some("close"));
}

#[tokio::test]
async fn a_login_is_a_session_until_logout() {
    let redis = RedisServer::start();
    let mut app = App::start(&redis, &[]).await;
    app.add_user("alice", "wonderland").await;

    let login = app.login("alice", "wonderland").await;
    assert_eq!((login.status, login.json()), (StatusCode::OK, json!({ "user": "alice" })));
    let cookie = login.header(header::SET_COOKIE).expect("a session cookie").to_owned();
    for flag in ["HttpOnly", "SameSite=Lax", "Secure"] {
        assert!(cookie.split(';').any(|part| part.trim() == flag), "{flag} in {cookie}");
    }
    assert_eq!(app.get("/me").await.json(), json!({ "user": "alice" }));
    assert_eq!(app.get("/").await.json()["visits"], 1);
    assert_eq!(app.get("/").await.json()["visits"], 2, "visits are counted per session");
    let session = app.cookie.clone().expect("cookie kept");

    let logout = app.send(Method::POST, "/logout", &[], Body::empty()).await;
    assert_eq!(logout.json(), json!({ "user": null, "ended_elsewhere": 0 }));
    let removal = logout.header(header::SET_COOKIE).expect("a removal cookie");
    assert!(removal.contains("Max-Age=0") && removal.contains("HttpOnly"), "{removal}");
    assert_eq!(app.get("/me").await.json(), json!({ "user": null }));
    app.cookie = Some(session);
    assert_eq!(app.get("/me").await.json(), json!({ "user": null }), "the old cookie is worthless");
}

#[tokio::test]
async fn a_login_gets_a_fresh_session_id_and_logout_all_ends_every_session() {
    let redis = RedisServer::start();
    // The replaced id keeps working this long, for requests already in flight.
    let mut phone = App::start(&redis, &["--session-grace", "200ms"]).await;
    phone.add_user("alice", "wonderland").await;
    assert_eq!(phone.login("alice", "wonderland").await.status, StatusCode::OK);
    let planted = phone.cookie.clone().expect("a session");
    assert_eq!(phone.login("alice", "wonderland").await.status, StatusCode::OK);
    assert_ne!(phone.cookie.as_ref(), Some(&planted), "a login never keeps the id it was sent (fixation)");
    let old = phone.other_browser();
    eventually("the replaced id to be retired after its grace", Duration::from_secs(5), || {
        let mut old = App { cookie: Some(planted.clone()), ..old.other_browser() };
        async move { (old.get("/me").await.json() == json!({ "user": null })).then_some(()) }
    })
    .await;
    assert_eq!(phone.get("/me").await.json(), json!({ "user": "alice" }), "the new id is the session");

    let mut laptop = phone.other_browser();
    assert_eq!(laptop.login("alice", "wonderland").await.status, StatusCode::OK);
    let everywhere = phone.send(Method::POST, "/logout?all=true", &[], Body::empty()).await;
    assert_eq!(everywhere.json(), json!({ "user": null, "ended_elsewhere": 1 }));
    assert_eq!(laptop.get("/me").await.json(), json!({ "user": null }), "the laptop's session ended too");
}

#[tokio::test]
async fn browsers_log_in_with_a_form_and_are_sent_back_to_the_page() {
    let redis = RedisServer::start();
    let mut app = App::start(&redis, &[]).await;
    app.add_user("alice", "wonderland").await;
    let form = [("content-type", "application/x-www-form-urlencoded"), ("accept", "text/html")];

    let wrong = app.send(Method::POST, "/login", &form, "username=alice&password=nope").await;
    assert_eq!(wrong.status, StatusCode::SEE_OTHER);
    assert_eq!(wrong.header(header::LOCATION), Some("/?error=bad-login"));
    assert!(app.cookie.is_none());

    let right = app.send(Method::POST, "/login", &form, "username=alice&password=wonderland").await;
    assert_eq!((right.status, right.header(header::LOCATION)), (StatusCode::SEE_OTHER, Some("/")));
    assert_eq!(app.get("/me").await.json(), json!({ "user": "alice" }));
}

#[tokio::test]
async fn other_origins_cannot_change_state() {
    let redis = RedisServer::start();
    let mut app = App::start(&redis, &["--allowed-origins", "https://app.example"]).await;
    // A malformed name is refused before any hashing: 401 means the request got through.
    let bad_name = r#"{"username":"no one","password":"x"}"#;
    let json = ("content-type", "application/json");
    for refused in [[("origin", "https://evil.example"), json], [("sec-fetch-site", "cross-site"), json]] {
        let answer = app.send(Method::POST, "/login", &refused, bad_name).await;
        answer.assert_error(StatusCode::FORBIDDEN);
    }
    for allowed in
        [("origin", "http://herd.test"), ("origin", "https://app.example"), ("sec-fetch-site", "same-origin")]
    {
        app.send(Method::POST, "/login", &[allowed, json], bad_name).await.assert_error(StatusCode::UNAUTHORIZED);
    }
    let foreign_get = app.send(Method::GET, "/me", &[("origin", "https://evil.example")], Body::empty()).await;
    assert_eq!(foreign_get.status, StatusCode::OK, "reading is not changing state");
}

#[tokio::test]
async fn failed_logins_are_rate_limited_per_client() {
    let redis = RedisServer::start();
    let mut app = App::start(&redis, &["--login-limit-per-user-address", "2"]).await;
    app.add_user("alice", "wonderland").await;
    app.login("alice", "nope").await.assert_error(StatusCode::UNAUTHORIZED);
    app.login("alice", "nope").await.assert_error(StatusCode::UNAUTHORIZED);
    let refused = app.login("alice", "wonderland").await;
    refused.assert_error(StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = refused.header(header::RETRY_AFTER).and_then(|s| s.parse().ok()).expect("Retry-After seconds");
    assert!((1..=300).contains(&retry), "{retry}");
    app.client = ([127, 0, 0, 2], 40000).into();
    assert_eq!(app.login("alice", "wonderland").await.status, StatusCode::OK, "another client is not locked out");
}

#[tokio::test]
async fn bad_input_gets_the_right_4xx() {
    let redis = RedisServer::start();
    let mut app = App::start(&redis, &["--heavy-max-n", "1000"]).await;
    app.post_json("/login", r#"{"username":"alice","#).await.assert_error(StatusCode::BAD_REQUEST);
    app.post_json("/login", r#"{"username":"alice"}"#).await.assert_error(StatusCode::UNPROCESSABLE_ENTITY);
    let text = app.send(Method::POST, "/login", &[("content-type", "text/plain")], "hi").await;
    text.assert_error(StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let huge = format!(r#"{{"username":"alice","password":"{}"}}"#, "x".repeat(MAX_BODY_BYTES));
    app.post_json("/login", &huge).await.assert_error(StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(app.get("/login").await.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(app.send(Method::DELETE, "/me", &[], Body::empty()).await.status, StatusCode::METHOD_NOT_ALLOWED);
    app.get("/no/such/route").await.assert_error(StatusCode::NOT_FOUND);
    app.get("/heavy?n=1001").await.assert_error(StatusCode::BAD_REQUEST);
    app.get("/heavy?n=lots").await.assert_error(StatusCode::BAD_REQUEST);
    assert_eq!(app.get("/heavy?n=1e3").await.json()["result"], 499_500, "the largest n allowed");
    assert_eq!(app.get("/debug/crash").await.status, StatusCode::NOT_FOUND, "debug routes are off by default");
}

#[tokio::test]
async fn stats_count_this_workers_requests_and_reset_on_broadcast() {
    let redis = RedisServer::start();
    let mut app = App::start(&redis, &["--admin-routes"]).await;
    for _ in 0..3 {
        app.get("/healthz").await;
    }
    let stats = app.get("/stats").await.json();
    assert_eq!(stats["requests"], 3, "{stats}");
    let workers = stats["workers"].as_array().expect("workers");
    assert_eq!(workers.len(), 1, "a worker alone is the whole cluster: {stats}");
    assert_eq!(
        (workers[0]["slot"].as_u64(), workers[0]["pid"].as_u64()),
        (Some(2), Some(u64::from(std::process::id())))
    );

    assert_eq!(app.send(Method::POST, "/stats/reset", &[], Body::empty()).await.status, StatusCode::ACCEPTED);
    let after = eventually("the reset to be applied", Duration::from_secs(5), || {
        let stats = call(&app.router, "/stats");
        async move {
            let stats: Value = serde_json::from_str(&stats.await.body).ok()?;
            (stats["workers"][0]["resets"] == 1).then_some(stats)
        }
    })
    .await;
    assert_eq!(after["requests"], 0, "{after}");
}

#[tokio::test]
async fn admin_routes_are_refused_without_the_flag() {
    let redis = RedisServer::start();
    let mut app = App::start(&redis, &[]).await;
    app.send(Method::POST, "/stats/reset", &[], Body::empty()).await.assert_error(StatusCode::FORBIDDEN);
    app.send(Method::DELETE, "/heavy/cached?n=10", &[], Body::empty()).await.assert_error(StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn the_cache_computes_once_and_forgets_on_request() {
    let redis = RedisServer::start();
    let mut app = App::start(&redis, &["--admin-routes"]).await;
    let first = app.get("/heavy/cached?n=1000").await.json();
    assert_eq!(
        (&first["result"], &first["cached"], &first["source"]),
        (&json!(499_500), &json!(false), &json!("computed"))
    );
    let again = app.get("/heavy/cached?n=1000").await.json();
    assert_eq!((&again["result"], &again["cached"]), (&json!(499_500), &json!(true)), "{again}");
    // A copy is kept only if no invalidation (or resubscription) came while it was read, and
    // the invalidation listener may still be settling: the next reads keep one.
    eventually("a read from this worker's local copy", Duration::from_secs(5), || {
        let answer = call(&app.router, "/heavy/cached?n=1000");
        async move { (answer.await.json()["source"] == "local").then_some(()) }
    })
    .await;
    assert_eq!(redis.keys("*heavy:1000*").len(), 1, "the shared entry is in Redis");

    let forget = app.send(Method::DELETE, "/heavy/cached?n=1000", &[], Body::empty()).await;
    assert_eq!((forget.status, forget.json()), (StatusCode::OK, json!({ "invalidated": 1000 })));
    assert!(redis.keys("*heavy:1000*").is_empty(), "gone from Redis");
    assert_eq!(app.get("/heavy/cached?n=1000").await.json()["source"], "computed", "and from the local copy");
}

#[tokio::test]
async fn heavy_work_beyond_the_cap_is_503_and_a_dropped_request_frees_its_slot() {
    let redis = RedisServer::start();
    let flags = ["--heavy-concurrency", "1", "--heavy-queue-wait", "50ms", "--heavy-max-n", "1e15"];
    let mut app = App::start(&redis, &flags).await;
    // Runs until dropped: hours of loop at any optimisation level.
    let endless = tokio::spawn(call(&app.router, "/heavy?n=1e15"));
    let busy = eventually("the endless sum to hold the only slot", Duration::from_secs(10), || {
        let answer = call(&app.router, "/heavy?n=10");
        async move { Some(answer.await).filter(|a| a.status == StatusCode::SERVICE_UNAVAILABLE) }
    })
    .await;
    busy.assert_error(StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(busy.header(header::RETRY_AFTER), Some("1"));
    endless.abort();
    let freed = eventually("the cancelled sum to give its slot back", Duration::from_secs(10), || {
        let answer = call(&app.router, "/heavy?n=10");
        async move { Some(answer.await).filter(|a| a.status == StatusCode::OK) }
    })
    .await;
    assert_eq!(freed.json()["result"], 45);
    assert_eq!(app.get("/healthz").await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_full_redis_is_507_and_a_dead_one_503() {
    let mut redis = RedisServer::start();
    let mut app = App::start(&redis, &[]).await;
    app.add_user("alice", "wonderland").await;
    assert_eq!(app.login("alice", "wonderland").await.status, StatusCode::OK);

    for setting in [["maxmemory-policy", "noeviction"], ["maxmemory", "1"]] {
        redis.cli(&["config", "set", setting[0], setting[1]]).expect("config set");
    }
    let full = app.login("alice", "wonderland").await;
    full.assert_error(StatusCode::INSUFFICIENT_STORAGE);
    assert!(full.header(header::RETRY_AFTER).is_none(), "retrying does not help a full Redis");
    assert_eq!(app.get("/me").await.json(), json!({ "user": "alice" }), "reading still works");

    redis.kill();
    let down = app.get("/me").await;
    down.assert_error(StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(down.header(header::RETRY_AFTER), Some("1"), "never \"you were logged out\"");
    app.get("/readyz").await.assert_error(StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(app.get("/healthz").await.status, StatusCode::OK, "alive without Redis");
}

#[tokio::test]
async fn the_stock_store_serves_the_same_login() {
    let redis = RedisServer::start();
    let mut app = App::start(&redis, &["--session-store", "stock"]).await;
    app.add_user("alice", "wonderland").await;
    assert_eq!(app.login("alice", "wonderland").await.json(), json!({ "user": "alice" }));
    assert_eq!(app.get("/me").await.json(), json!({ "user": "alice" }));
    let cookie = app.cookie.clone().expect("a session cookie");
    let id = cookie.trim_start_matches("herd_session=");
    assert_eq!(redis.keys(id), vec![id.to_owned()], "stored under its bare id, as the stock store does");
}
