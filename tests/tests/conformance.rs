//! The tower-sessions contract, one suite run against every store: `tower_sessions::MemoryStore`
//! (the reference), the stock `tower-sessions-redis-store` 0.16, herd's store bare and herd's
//! store under its `SessionScopeLayer`. Each case is written once, in [`route_cases!`] (an axum
//! app driven in-process with `oneshot`, the way an app sees a store) and [`store_cases!`] (the
//! `SessionStore` trait called directly), and instantiated per store. The expectations are the
//! same for every store; where one differs on purpose the case skips that one assertion for it
//! (see [`Difference`]) and a separately named case states what it does instead. The README's
//! "drop-in" section lists the same differences.
//!
//! herd's store runs here as a library user gets it from `RedisSessionStore::new`: the app's
//! expiry rules alone (no herd limits on top), which is what makes it a drop-in.

use std::{collections::HashMap, sync::Arc, time::Duration as StdDuration};

use axum::{
    body::Body,
    extract::Path,
    http::{header, Request, StatusCode},
    routing::{get, post},
    Json, Router,
};
use herd_e2e::RedisServer;
use herd_session_store::{Keys, RedisConfig, RedisSessionStore, SessionLimits};
use serde_json::{json, Value};
use time::{Duration, OffsetDateTime};
use tower::ServiceExt;
use tower_sessions::{
    cookie::SameSite,
    session::{Id, Record},
    Expiry, MemoryStore, Session, SessionManagerLayer, SessionStore,
};

/// The short expiry the waiting cases use. Two seconds, not one: the stock store rounds the
/// key's expiry down to the second (`EXAT`), so its sessions live between one and two seconds.
const SHORT: Duration = Duration::seconds(2);
/// When a waiting case checks that a session is still there: safely inside even the stock
/// store's shortest life.
const NOT_YET: Duration = Duration::milliseconds(500);

/// Where a store deliberately behaves otherwise than the reference; each has its own case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Difference {
    /// A login (`cycle_id`) retires the old id instead of deleting it: it keeps answering for a
    /// grace period, so requests already in flight with it do not fail (herd's scope layer).
    OldIdAnswersDuringGrace,
    /// `save` of a record that is not stored does nothing (it must not bring back a session a
    /// logout or an expiry ended): herd's store. `MemoryStore` stores it.
    SaveNeverRecreates,
    /// The stock Redis store fails (`Parse Error: Could not convert to bool`, a 500 for the
    /// client) when `create` meets a taken id and when `save` meets a missing record: its `SET
    /// NX`/`XX` answers nil there and it asks fred for a bool.
    ErrsOnTakenOrMissingKey,
    /// A session bigger than `SessionLimits::max_bytes` is refused: herd's store (413 under
    /// its scope layer).
    SizeCap,
}

/// One store, wired into axum the way an app would.
struct Fixture {
    /// Kept for the Redis stores: killed when the case ends.
    _redis: Option<RedisServer>,
    store: Arc<dyn SessionStore>,
    /// The app with a manager layer configured by the case.
    router: Box<dyn Fn(&Config) -> Router + Send + Sync>,
    differences: &'static [Difference],
}

impl Fixture {
    fn differs(&self, difference: Difference) -> bool {
        self.differences.contains(&difference)
    }
}

/// What a case sets on `SessionManagerLayer`.
#[derive(Clone, Default)]
struct Config {
    expiry: Option<Expiry>,
    always_save: bool,
    cookie: Option<CookieConfig>,
}

#[derive(Clone)]
struct CookieConfig {
    name: &'static str,
    domain: &'static str,
    path: &'static str,
    secure: bool,
    same_site: SameSite,
    http_only: bool,
}

fn manager<S: SessionStore + Clone>(store: S, config: &Config) -> SessionManagerLayer<S> {
    let mut layer = SessionManagerLayer::new(store).with_secure(false).with_always_save(config.always_save);
    if let Some(expiry) = config.expiry {
        layer = layer.with_expiry(expiry);
    }
    if let Some(cookie) = &config.cookie {
        layer = layer
            .with_name(cookie.name)
            .with_domain(cookie.domain)
            .with_path(cookie.path)
            .with_secure(cookie.secure)
            .with_same_site(cookie.same_site)
            .with_http_only(cookie.http_only);
    }
    layer
}

fn memory() -> Fixture {
    let store = MemoryStore::default();
    Fixture {
        _redis: None,
        store: Arc::new(store.clone()),
        router: Box::new(move |config| routes().layer(manager(store.clone(), config))),
        differences: &[],
    }
}

async fn pool_on(redis: &RedisServer) -> fred::clients::Pool {
    herd_session_store::connect(&RedisConfig::new(redis.url())).await.expect("connect")
}

async fn stock() -> Fixture {
    let redis = RedisServer::start();
    let store = tower_sessions_redis_store::RedisStore::new(pool_on(&redis).await);
    Fixture {
        _redis: Some(redis),
        store: Arc::new(store.clone()),
        router: Box::new(move |config| routes().layer(manager(store.clone(), config))),
        differences: &[Difference::ErrsOnTakenOrMissingKey],
    }
}

/// The grace the scoped fixture gives a login's old id: short, so its case can wait it out.
const GRACE: StdDuration = StdDuration::from_millis(600);

async fn herd(scoped: bool) -> Fixture {
    let redis = RedisServer::start();
    let limits = SessionLimits { grace: GRACE, ..SessionLimits::default() };
    let store = RedisSessionStore::new(pool_on(&redis).await, Keys::default()).with_limits(limits);
    let differences: &'static [Difference] = if scoped {
        &[Difference::SaveNeverRecreates, Difference::OldIdAnswersDuringGrace, Difference::SizeCap]
    } else {
        &[Difference::SaveNeverRecreates, Difference::SizeCap]
    };
    Fixture {
        _redis: Some(redis),
        store: Arc::new(store.clone()),
        router: Box::new(move |config| {
            let router = routes().layer(manager(store.clone(), config));
            if scoped {
                router.layer(store.scope_layer())
            } else {
                router
            }
        }),
        differences,
    }
}

// ---- the app --------------------------------------------------------------------------------

fn unavailable<E>(_: E) -> StatusCode {
    StatusCode::SERVICE_UNAVAILABLE
}

async fn get_value(Path(name): Path<String>, session: Session) -> Result<Json<Value>, StatusCode> {
    Ok(Json(session.get::<Value>(&name).await.map_err(unavailable)?.unwrap_or(Value::Null)))
}

async fn insert(Path((name, value)): Path<(String, String)>, session: Session) -> Result<(), StatusCode> {
    session.insert(&name, value).await.map_err(unavailable)
}

async fn remove(Path(name): Path<String>, session: Session) -> Result<(), StatusCode> {
    session.remove::<Value>(&name).await.map(drop).map_err(unavailable)
}

async fn flush(session: Session) -> Result<(), StatusCode> {
    session.flush().await.map_err(unavailable)
}

async fn cycle_id(session: Session) -> Result<(), StatusCode> {
    // Loaded first, as a login handler does (it reads who is logged in).
    session.get::<Value>("x").await.map_err(unavailable)?;
    session.cycle_id().await.map_err(unavailable)
}

/// Stores a value of `bytes` bytes.
async fn insert_big(Path(bytes): Path<usize>, session: Session) -> Result<(), StatusCode> {
    session.insert("big", "x".repeat(bytes)).await.map_err(unavailable)
}

/// `on-inactivity/<s>`, `at/<s from now>` or `on-session-end`.
async fn set_expiry(Path((kind, secs)): Path<(String, i64)>, session: Session) -> Result<(), StatusCode> {
    session.get::<Value>("x").await.map_err(unavailable)?;
    let expiry = match kind.as_str() {
        "on-inactivity" => Expiry::OnInactivity(Duration::seconds(secs)),
        "at" => Expiry::AtDateTime(OffsetDateTime::now_utc() + Duration::seconds(secs)),
        _ => Expiry::OnSessionEnd,
    };
    session.set_expiry(Some(expiry));
    Ok(())
}

fn routes() -> Router {
    Router::new()
        .route("/get/{name}", get(get_value))
        .route("/insert/{name}/{value}", post(insert))
        .route("/remove/{name}", post(remove))
        .route("/big/{bytes}", post(insert_big))
        .route("/flush", post(flush))
        .route("/cycle-id", post(cycle_id))
        .route("/expiry/{kind}/{secs}", post(set_expiry))
}

/// What a response told the client.
struct Answer {
    status: StatusCode,
    /// The whole `Set-Cookie` header, attributes included.
    set_cookie: Option<String>,
    body: Value,
}

impl Answer {
    /// `name=value` of the cookie it set, to send back.
    fn cookie(&self) -> String {
        let set = self.set_cookie.as_deref().expect("a Set-Cookie header");
        set.split(';').next().expect("split yields one part").to_owned()
    }

    fn cookie_attribute(&self, name: &str) -> Option<String> {
        let set = self.set_cookie.as_deref()?;
        set.split(';').skip(1).map(str::trim).find_map(|attribute| {
            let (key, value) = attribute.split_once('=').unwrap_or((attribute, ""));
            key.eq_ignore_ascii_case(name).then(|| value.to_owned())
        })
    }

    /// True for a cookie that tells the browser to drop it.
    fn removes_cookie(&self) -> bool {
        self.cookie_attribute("Max-Age").as_deref() == Some("0")
    }
}

async fn call(router: &Router, method: &str, path: &str, cookie: Option<&str>) -> Answer {
    let mut request = Request::builder().method(method).uri(path);
    if let Some(cookie) = cookie {
        request = request.header(header::COOKIE, cookie);
    }
    let response = router.clone().oneshot(request.body(Body::empty()).expect("request")).await.expect("infallible");
    let status = response.status();
    let set_cookie = response.headers().get(header::SET_COOKIE).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.expect("body");
    Answer { status, set_cookie, body: serde_json::from_slice(&bytes).unwrap_or(Value::Null) }
}

/// The value `name` holds for the client with `cookie`.
async fn value(router: &Router, cookie: &str, name: &str) -> Value {
    let answer = call(router, "GET", &format!("/get/{name}"), Some(cookie)).await;
    assert_eq!(answer.status, StatusCode::OK);
    answer.body
}

/// A new session holding `foo = "42"`; its cookie.
async fn begin(router: &Router) -> String {
    let answer = call(router, "POST", "/insert/foo/42", None).await;
    assert_eq!(answer.status, StatusCode::OK);
    answer.cookie()
}

async fn sleep(duration: Duration) {
    tokio::time::sleep(duration.unsigned_abs()).await;
}

// ---- route cases ----------------------------------------------------------------------------

/// Route cases, each `async fn(Fixture)`.
mod route {
    use super::*;

    pub(super) async fn no_session_set(f: Fixture) {
        let router = (f.router)(&Config::default());
        let answer = call(&router, "GET", "/get/foo", None).await;
        assert_eq!((answer.status, answer.body), (StatusCode::OK, Value::Null));
        assert_eq!(answer.set_cookie, None, "reading nothing sets no cookie");
    }

    pub(super) async fn bogus_cookie(f: Fixture) {
        let router = (f.router)(&Config::default());
        let unknown = format!("id={}", Id::default());
        let answer = call(&router, "GET", "/get/foo", Some(&unknown)).await;
        assert_eq!((answer.status, answer.body), (StatusCode::OK, Value::Null));
        let answer = call(&router, "POST", "/insert/foo/1", Some(&unknown)).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_ne!(answer.cookie(), unknown, "an unknown id is never adopted (no session fixation)");
    }

    pub(super) async fn malformed_cookie(f: Fixture) {
        let router = (f.router)(&Config::default());
        for cookie in ["id=", "id=!!!", "id=AAAA", "id=%00%01", &format!("id={}x", Id::default())] {
            let answer = call(&router, "GET", "/get/foo", Some(cookie)).await;
            assert_eq!((answer.status, &answer.body), (StatusCode::OK, &Value::Null), "{cookie}");
        }
    }

    pub(super) async fn insert_and_get(f: Fixture) {
        let router = (f.router)(&Config::default());
        let cookie = begin(&router).await;
        assert_eq!(value(&router, &cookie, "foo").await, json!("42"));
        let answer = call(&router, "POST", "/insert/foo/43", Some(&cookie)).await;
        assert_eq!(answer.cookie(), cookie, "same session, same id");
        assert_eq!(value(&router, &cookie, "foo").await, json!("43"));
    }

    pub(super) async fn remove_one_of_two(f: Fixture) {
        let router = (f.router)(&Config::default());
        let cookie = begin(&router).await;
        call(&router, "POST", "/insert/bar/x", Some(&cookie)).await;
        let answer = call(&router, "POST", "/remove/foo", Some(&cookie)).await;
        assert!(!answer.removes_cookie());
        assert_eq!(value(&router, &cookie, "foo").await, Value::Null);
        assert_eq!(value(&router, &cookie, "bar").await, json!("x"));
    }

    /// A session without values is still a session (tower-sessions 0.14 saves it and keeps
    /// the cookie; only `flush` ends it).
    pub(super) async fn remove_last_value(f: Fixture) {
        let router = (f.router)(&Config::default());
        let cookie = begin(&router).await;
        let answer = call(&router, "POST", "/remove/foo", Some(&cookie)).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.cookie(), cookie, "the same session, saved empty");
        assert!(!answer.removes_cookie());
        assert_eq!(value(&router, &cookie, "foo").await, Value::Null);
        let answer = call(&router, "POST", "/insert/bar/1", Some(&cookie)).await;
        assert_eq!(answer.cookie(), cookie, "and it takes values again");
    }

    pub(super) async fn flush(f: Fixture) {
        let router = (f.router)(&Config::default());
        let cookie = begin(&router).await;
        let answer = call(&router, "POST", "/flush", Some(&cookie)).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert!(answer.removes_cookie(), "{:?}", answer.set_cookie);
        assert_eq!(value(&router, &cookie, "foo").await, Value::Null, "the flushed session is gone from the store");
    }

    pub(super) async fn cycle_id(f: Fixture) {
        let router = (f.router)(&Config::default());
        let cookie = begin(&router).await;
        let answer = call(&router, "POST", "/cycle-id", Some(&cookie)).await;
        assert_eq!(answer.status, StatusCode::OK);
        let cycled = answer.cookie();
        assert_ne!(cycled, cookie, "a new id");
        assert_eq!(value(&router, &cycled, "foo").await, json!("42"), "the data moved to it");
        if !f.differs(Difference::OldIdAnswersDuringGrace) {
            assert_eq!(value(&router, &cookie, "foo").await, Value::Null, "the old id is gone");
        }
    }

    /// herd's scope layer: after a login the old id answers for the grace period (requests in
    /// flight with it do not fail), then never again.
    pub(super) async fn herd_old_id_answers_during_grace(f: Fixture) {
        assert!(f.differs(Difference::OldIdAnswersDuringGrace));
        let router = (f.router)(&Config::default());
        let cookie = begin(&router).await;
        let cycled = call(&router, "POST", "/cycle-id", Some(&cookie)).await.cookie();
        assert_eq!(value(&router, &cookie, "foo").await, json!("42"), "the old id still answers");
        let deadline = tokio::time::Instant::now() + GRACE * 5;
        while value(&router, &cookie, "foo").await != Value::Null {
            assert!(tokio::time::Instant::now() < deadline, "the old id still answers long after its grace");
            tokio::time::sleep(GRACE / 10).await;
        }
        assert_eq!(value(&router, &cycled, "foo").await, json!("42"), "the new one lives on");
    }

    pub(super) async fn max_age_cookie_attribute(f: Fixture) {
        let on_inactivity = Config { expiry: Some(Expiry::OnInactivity(Duration::minutes(5))), ..Config::default() };
        let answer = call(&(f.router)(&on_inactivity), "POST", "/insert/foo/1", None).await;
        assert_eq!(answer.cookie_attribute("Max-Age").as_deref(), Some("300"));
        let at = Config {
            expiry: Some(Expiry::AtDateTime(OffsetDateTime::now_utc() + Duration::hours(1))),
            ..Config::default()
        };
        let answer = call(&(f.router)(&at), "POST", "/insert/foo/1", None).await;
        let max_age: i64 = answer.cookie_attribute("Max-Age").expect("Max-Age").parse().expect("a number");
        assert!((3590..=3600).contains(&max_age), "{max_age}");
        let on_end = Config { expiry: Some(Expiry::OnSessionEnd), ..Config::default() };
        let answer = call(&(f.router)(&on_end), "POST", "/insert/foo/1", None).await;
        assert_eq!(answer.cookie_attribute("Max-Age"), None, "a session cookie");
    }

    pub(super) async fn cookie_attributes(f: Fixture) {
        let config = Config {
            cookie: Some(CookieConfig {
                name: "sid",
                domain: "example.com",
                path: "/app",
                secure: true,
                same_site: SameSite::Lax,
                http_only: false,
            }),
            ..Config::default()
        };
        let router = (f.router)(&config);
        let answer = call(&router, "POST", "/insert/foo/1", None).await;
        let cookie = answer.cookie();
        assert!(cookie.starts_with("sid="), "{cookie}");
        assert_eq!(answer.cookie_attribute("Domain").as_deref(), Some("example.com"));
        assert_eq!(answer.cookie_attribute("Path").as_deref(), Some("/app"));
        assert_eq!(answer.cookie_attribute("SameSite").as_deref(), Some("Lax"));
        assert!(answer.cookie_attribute("Secure").is_some());
        assert!(answer.cookie_attribute("HttpOnly").is_none());
        assert_eq!(value(&router, &cookie, "foo").await, json!("1"), "the renamed cookie finds its session");
        let strict = Config {
            cookie: Some(CookieConfig { same_site: SameSite::Strict, http_only: true, ..config.cookie.expect("set") }),
            ..Config::default()
        };
        let answer = call(&(f.router)(&strict), "POST", "/insert/foo/1", None).await;
        assert_eq!(answer.cookie_attribute("SameSite").as_deref(), Some("Strict"));
        assert!(answer.cookie_attribute("HttpOnly").is_some());
    }

    /// Inactivity counts from the last save: a read does not move the expiry (without
    /// always-save), so a session read halfway still ends on time.
    pub(super) async fn expiry_on_inactivity(f: Fixture) {
        let router = (f.router)(&Config { expiry: Some(Expiry::OnInactivity(SHORT)), ..Config::default() });
        let cookie = begin(&router).await;
        assert_eq!(value(&router, &cookie, "foo").await, json!("42"));
        sleep(NOT_YET).await;
        assert_eq!(value(&router, &cookie, "foo").await, json!("42"), "not yet");
        sleep(SHORT - NOT_YET + Duration::milliseconds(300)).await;
        assert_eq!(value(&router, &cookie, "foo").await, Value::Null, "ended: reads do not extend it");
    }

    /// With always-save every request saves, and each save moves the expiry forward.
    pub(super) async fn always_save_moves_the_expiry(f: Fixture) {
        let config = Config { expiry: Some(Expiry::OnInactivity(SHORT)), always_save: true, ..Config::default() };
        let router = (f.router)(&config);
        let cookie = begin(&router).await;
        for _ in 0..3 {
            sleep(NOT_YET).await;
            let answer = call(&router, "GET", "/get/foo", Some(&cookie)).await;
            assert_eq!(answer.body, json!("42"), "each read saved and moved the expiry");
            assert_eq!(answer.cookie_attribute("Max-Age").as_deref(), Some("2"), "and the cookie's");
        }
        sleep(SHORT + Duration::milliseconds(300)).await;
        assert_eq!(value(&router, &cookie, "foo").await, Value::Null, "idle for longer than the expiry: ended");
    }

    pub(super) async fn expiry_at_date_time(f: Fixture) {
        let at = OffsetDateTime::now_utc() + SHORT;
        let router = (f.router)(&Config { expiry: Some(Expiry::AtDateTime(at)), ..Config::default() });
        let cookie = begin(&router).await;
        assert_eq!(value(&router, &cookie, "foo").await, json!("42"));
        sleep(at - OffsetDateTime::now_utc() + Duration::milliseconds(200)).await;
        assert_eq!(value(&router, &cookie, "foo").await, Value::Null, "ended at the date");
    }

    /// `set_expiry` in one request sets that session's expiry (and its cookie's) from then on,
    /// until a later save under the layer's default replaces it.
    pub(super) async fn set_expiry_mid_session(f: Fixture) {
        let router = (f.router)(&Config::default());
        let cookie = begin(&router).await;
        let answer =
            call(&router, "POST", &format!("/expiry/on-inactivity/{}", SHORT.whole_seconds()), Some(&cookie)).await;
        assert_eq!(answer.cookie_attribute("Max-Age").as_deref(), Some("2"));
        assert_eq!(value(&router, &cookie, "foo").await, json!("42"));
        sleep(SHORT + Duration::milliseconds(300)).await;
        assert_eq!(value(&router, &cookie, "foo").await, Value::Null, "the shorter expiry was enforced");
    }

    /// Sessions of a few hundred KiB are stored like any other.
    pub(super) async fn big_session(f: Fixture) {
        if f.differs(Difference::SizeCap) {
            return; // see `herd_refuses_a_session_over_its_size_cap`
        }
        let router = (f.router)(&Config::default());
        let answer = call(&router, "POST", "/big/300000", None).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(value(&router, &answer.cookie(), "big").await.as_str().map(str::len), Some(300_000));
    }

    /// herd's store refuses a session over its size cap (64 KiB by default): 413 with the
    /// reason under the scope layer, an error (so tower-sessions' 500) without it.
    pub(super) async fn herd_refuses_a_session_over_its_size_cap(f: Fixture) {
        assert!(f.differs(Difference::SizeCap));
        let router = (f.router)(&Config::default());
        let answer = call(&router, "POST", "/big/300000", None).await;
        assert!(
            [StatusCode::PAYLOAD_TOO_LARGE, StatusCode::INTERNAL_SERVER_ERROR].contains(&answer.status),
            "{:?}",
            answer.status
        );
        assert_eq!(answer.set_cookie, None, "no session was created");
        let answer = call(&router, "POST", "/big/1000", None).await;
        assert_eq!(answer.status, StatusCode::OK, "a small one is fine");
    }

    /// From a short inactivity expiry to a session cookie (two weeks in the store): the change
    /// alone is saved, and the session outlives the short expiry.
    pub(super) async fn change_expiry_type(f: Fixture) {
        let router = (f.router)(&Config { expiry: Some(Expiry::OnInactivity(SHORT)), ..Config::default() });
        let cookie = begin(&router).await;
        let answer = call(&router, "POST", "/expiry/on-session-end/0", Some(&cookie)).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.cookie_attribute("Max-Age"), None, "now a session cookie");
        sleep(SHORT + Duration::milliseconds(300)).await;
        assert_eq!(value(&router, &cookie, "foo").await, json!("42"), "the longer expiry replaced the short one");
        let answer = call(&router, "POST", "/expiry/at/60", Some(&cookie)).await;
        let max_age: i64 = answer.cookie_attribute("Max-Age").expect("Max-Age").parse().expect("a number");
        assert!((58..=60).contains(&max_age), "and then a date: {max_age}");
    }
}

// ---- store cases ----------------------------------------------------------------------------

/// `SessionStore` cases, each `async fn(Fixture)`: crafted records, no session layer.
mod store {
    use super::*;

    fn record(expiry_date: OffsetDateTime) -> Record {
        Record {
            id: Id::default(),
            data: HashMap::from([
                ("user".to_owned(), json!("alice")),
                ("ü:n\n".to_owned(), json!({"nested": [1, 2.5, null, "é:"], "big": u64::MAX})),
                (String::new(), json!("")),
            ]),
            expiry_date,
        }
    }

    /// A date with nanoseconds, as tower-sessions' own are.
    fn soon() -> OffsetDateTime {
        OffsetDateTime::now_utc() + Duration::hours(1) + Duration::nanoseconds(123_456_789)
    }

    pub(super) async fn create_then_load_returns_what_was_saved(f: Fixture) {
        let mut created = record(soon());
        f.store.create(&mut created).await.expect("create");
        let loaded = f.store.load(&created.id).await.expect("load").expect("found");
        assert_eq!(loaded, created, "id, data and expiry date exactly as saved");
        assert_eq!(loaded.expiry_date.unix_timestamp_nanos(), created.expiry_date.unix_timestamp_nanos());
    }

    pub(super) async fn create_never_overwrites_another_session(f: Fixture) {
        if f.differs(Difference::ErrsOnTakenOrMissingKey) {
            return; // see `stock_errs_on_taken_or_missing_keys`
        }
        let mut first = record(soon());
        f.store.create(&mut first).await.expect("create");
        let mut second = record(soon());
        second.id = first.id;
        second.data = HashMap::from([("user".to_owned(), json!("mallory"))]);
        f.store.create(&mut second).await.expect("create");
        assert_ne!(second.id, first.id, "a colliding id is replaced by a fresh one");
        assert_eq!(f.store.load(&first.id).await.expect("load"), Some(first), "the first is intact");
        assert_eq!(f.store.load(&second.id).await.expect("load"), Some(second));
    }

    pub(super) async fn save_replaces_data_and_expiry(f: Fixture) {
        let mut saved = record(soon());
        f.store.create(&mut saved).await.expect("create");
        saved.data = HashMap::from([("user".to_owned(), json!("bob"))]);
        saved.expiry_date = soon() + Duration::days(30);
        f.store.save(&saved).await.expect("save");
        assert_eq!(f.store.load(&saved.id).await.expect("load"), Some(saved.clone()));
        saved.expiry_date = soon() - Duration::minutes(30);
        f.store.save(&saved).await.expect("save");
        assert_eq!(f.store.load(&saved.id).await.expect("load"), Some(saved), "an earlier expiry is kept too");
    }

    pub(super) async fn delete_then_load_is_none(f: Fixture) {
        let mut saved = record(soon());
        f.store.create(&mut saved).await.expect("create");
        f.store.delete(&saved.id).await.expect("delete");
        assert_eq!(f.store.load(&saved.id).await.expect("load"), None);
        f.store.delete(&saved.id).await.expect("deleting what is gone is not an error");
        f.store.delete(&Id::default()).await.expect("nor is deleting what never was");
    }

    pub(super) async fn unknown_id_is_none(f: Fixture) {
        assert_eq!(f.store.load(&Id::default()).await.expect("load"), None);
    }

    pub(super) async fn expiry_in_the_past(f: Fixture) {
        let mut past = record(OffsetDateTime::now_utc() - Duration::seconds(1));
        f.store.create(&mut past).await.expect("creating an expired record is not an error");
        assert_eq!(f.store.load(&past.id).await.expect("load"), None, "created expired: not found");
        let mut live = record(soon());
        f.store.create(&mut live).await.expect("create");
        live.expiry_date = OffsetDateTime::now_utc() - Duration::seconds(1);
        f.store.save(&live).await.expect("save");
        assert_eq!(f.store.load(&live.id).await.expect("load"), None, "saved expired: gone");
    }

    pub(super) async fn load_after_the_expiry_date_is_none(f: Fixture) {
        let mut saved = record(OffsetDateTime::now_utc() + Duration::milliseconds(1_300));
        f.store.create(&mut saved).await.expect("create");
        sleep(Duration::milliseconds(1_400)).await;
        assert_eq!(f.store.load(&saved.id).await.expect("load"), None);
    }

    /// A save that finds no record: `MemoryStore` stores it again.
    pub(super) async fn save_of_a_missing_record(f: Fixture) {
        if f.differs(Difference::ErrsOnTakenOrMissingKey) || f.differs(Difference::SaveNeverRecreates) {
            return; // see `stock_errs_on_taken_or_missing_keys`, `herd_save_never_recreates_a_missing_record`
        }
        let saved = deleted_then_saved(&f).await;
        assert_eq!(f.store.load(&saved.id).await.expect("load"), Some(saved), "stored again");
    }

    /// herd's store: a save that finds no record does not write it (a logout or an expiry
    /// elsewhere must not be undone by a late save).
    pub(super) async fn herd_save_never_recreates_a_missing_record(f: Fixture) {
        assert!(f.differs(Difference::SaveNeverRecreates));
        let saved = deleted_then_saved(&f).await;
        assert_eq!(f.store.load(&saved.id).await.expect("load"), None, "not brought back");
    }

    async fn deleted_then_saved(f: &Fixture) -> Record {
        let mut saved = record(soon());
        f.store.create(&mut saved).await.expect("create");
        f.store.delete(&saved.id).await.expect("delete");
        f.store.save(&saved).await.expect("a save of a missing record is not an error");
        saved
    }
}

/// Instantiates every route case and store case for one fixture.
macro_rules! conformance {
    ($store:ident, $fixture:expr, route: [$($route:ident),* $(,)?], store: [$($case:ident),* $(,)?]) => {
        mod $store {
            use super::*;
            $(
                #[tokio::test]
                async fn $route() {
                    route::$route($fixture.await).await;
                }
            )*
            $(
                #[tokio::test]
                async fn $case() {
                    store::$case($fixture.await).await;
                }
            )*
        }
    };
}

/// The route cases every store passes.
macro_rules! route_cases {
    ($store:ident, $fixture:expr $(, extra: [$($extra:ident),*])?) => {
        conformance!($store, $fixture,
            route: [no_session_set, bogus_cookie, malformed_cookie, insert_and_get, remove_one_of_two,
                remove_last_value, flush, cycle_id, max_age_cookie_attribute, cookie_attributes,
                expiry_on_inactivity, always_save_moves_the_expiry, expiry_at_date_time,
                set_expiry_mid_session, change_expiry_type, big_session $($(, $extra)*)?],
            store: []);
    };
}

/// The store cases every store passes.
macro_rules! store_cases {
    ($store:ident, $fixture:expr $(, extra: [$($extra:ident),*])?) => {
        conformance!($store, $fixture,
            route: [],
            store: [create_then_load_returns_what_was_saved, create_never_overwrites_another_session,
                save_replaces_data_and_expiry, delete_then_load_is_none, unknown_id_is_none,
                expiry_in_the_past, load_after_the_expiry_date_is_none, save_of_a_missing_record
                $($(, $extra)*)?]);
    };
}

async fn ready<T>(value: T) -> T {
    value
}

route_cases!(memory_routes, ready(memory()));
route_cases!(stock_routes, stock());
route_cases!(herd_routes, herd(false), extra: [herd_refuses_a_session_over_its_size_cap]);
route_cases!(herd_scoped_routes, herd(true), extra: [herd_old_id_answers_during_grace, herd_refuses_a_session_over_its_size_cap]);
store_cases!(memory_store, ready(memory()));
store_cases!(stock_store, stock());
store_cases!(herd_store, herd(false), extra: [herd_save_never_recreates_a_missing_record]);

/// The stock Redis store's failures where the others succeed (see
/// [`Difference::ErrsOnTakenOrMissingKey`]): herd's store is not a drop-in for these, it is
/// what the stock store should have done.
#[tokio::test]
async fn stock_errs_on_taken_or_missing_keys() {
    let f = stock().await;
    assert!(f.differs(Difference::ErrsOnTakenOrMissingKey));
    let expiry_date = OffsetDateTime::now_utc() + Duration::hours(1);
    let mut first = Record { id: Id::default(), data: HashMap::new(), expiry_date };
    f.store.create(&mut first).await.expect("create");
    let mut colliding = first.clone();
    let err = f.store.create(&mut colliding).await.expect_err("a taken id fails the create");
    assert!(err.to_string().contains("convert to bool"), "{err}");
    f.store.delete(&first.id).await.expect("delete");
    let err = f.store.save(&first).await.expect_err("a missing record fails the save");
    assert!(err.to_string().contains("convert to bool"), "{err}");
}
