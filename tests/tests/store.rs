//! herd's session store as a library, in an axum app driven in-process against a real
//! `redis-server`: what `SessionScopeLayer` adds to the stock tower-sessions semantics.

use std::time::Duration;

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
use tower::ServiceExt;
use tower_sessions::{Expiry, Session, SessionManagerLayer};

/// Loads the session, waits `ms`, then sets `name` (an app that reads, works, then writes).
async fn set_after(Path((name, ms)): Path<(String, u64)>, session: Session) -> StatusCode {
    if session.get::<Value>("user").await.is_err() {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    tokio::time::sleep(Duration::from_millis(ms)).await;
    match session.insert(&name, true).await {
        Ok(()) => StatusCode::OK,
        Err(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// Loads the session, waits `ms`, then shows it (a slow read-only request).
async fn show_after(Path(ms): Path<u64>, session: Session) -> Json<Value> {
    let _ = session.get::<Value>("user").await;
    tokio::time::sleep(Duration::from_millis(ms)).await;
    show(session).await
}

async fn show(session: Session) -> Json<Value> {
    let mut shown = json!({});
    for name in ["user", "a", "b"] {
        shown[name] = session.get::<Value>(name).await.ok().flatten().unwrap_or(Value::Null);
    }
    Json(shown)
}

async fn start(session: Session) -> StatusCode {
    match session.insert("user", "guest").await {
        Ok(()) => StatusCode::OK,
        Err(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// A login: new id, new user. `fail` makes the request fail after the new session was saved.
async fn login(Path(fail): Path<bool>, session: Session) -> StatusCode {
    let rotated = async {
        session.cycle_id().await?;
        session.insert("user", "alice").await?;
        session.save().await
    };
    match (rotated.await, fail) {
        (Ok(()), false) => StatusCode::OK,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Names and values a careless record format would split, merge or round wrongly.
fn odd_values() -> Vec<(&'static str, Value)> {
    vec![
        ("a:b", json!("1:2")),
        ("ü", json!("ünï\n:")),
        ("", json!("12:x")),
        ("3:n", json!("")),
        ("big", json!(12_345_678_901_234_567_u64)),
    ]
}

/// Step 0 stores [`odd_values`], step 1 changes one and removes another (a merged save); every
/// step answers with what the session then holds.
async fn odd(Path(step): Path<u8>, session: Session) -> Result<Json<Value>, StatusCode> {
    let failed = |_| StatusCode::SERVICE_UNAVAILABLE;
    match step {
        0 => {
            for (name, value) in odd_values() {
                session.insert(name, value).await.map_err(failed)?;
            }
        }
        1 => {
            session.insert("ü", json!({"k": [1, "é:"]})).await.map_err(failed)?;
            session.remove::<Value>("a:b").await.map_err(failed)?;
        }
        _ => {}
    }
    let mut shown = json!({});
    for (name, _) in odd_values() {
        shown[name] = session.get::<Value>(name).await.map_err(failed)?.unwrap_or(Value::Null);
    }
    Ok(Json(shown))
}

fn app(store: &RedisSessionStore, scoped: bool) -> Router {
    app_with(store, scoped, |manager| manager)
}

type Manager = SessionManagerLayer<RedisSessionStore>;

/// [`app`] with the app's own settings on its `SessionManagerLayer` (an expiry, always-save).
fn app_with(store: &RedisSessionStore, scoped: bool, configure: impl FnOnce(Manager) -> Manager) -> Router {
    let manager = configure(SessionManagerLayer::new(store.clone()).with_secure(false));
    let router = Router::new()
        .route("/start", post(start))
        .route("/set/{name}/{ms}", post(set_after))
        .route("/login/{fail}", post(login))
        .route("/show", get(show))
        .route("/show-after/{ms}", get(show_after))
        .route("/odd/{step}", post(odd))
        .layer(manager);
    if scoped {
        router.layer(store.scope_layer())
    } else {
        router
    }
}

/// One request; returns the status, the session cookie it set (if any) and the JSON body.
async fn call(app: &Router, method: &str, path: &str, cookie: Option<&str>) -> (StatusCode, Option<String>, Value) {
    let mut request = Request::builder().method(method).uri(path);
    if let Some(cookie) = cookie {
        request = request.header(header::COOKIE, cookie);
    }
    let response = app.clone().oneshot(request.body(Body::empty()).expect("request")).await.expect("infallible");
    let status = response.status();
    let cookie = response
        .headers()
        .get(header::SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::to_owned);
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.expect("body");
    (status, cookie, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

async fn store_on(redis: &RedisServer, limits: SessionLimits) -> RedisSessionStore {
    let pool = herd_session_store::connect(&RedisConfig::new(redis.url())).await.expect("connect");
    RedisSessionStore::new(pool, Keys::default()).with_limits(limits)
}

/// `POST /start` on a fresh client: the new session's cookie.
async fn begin_session(app: &Router) -> String {
    let (_, cookie, _) = call(app, "POST", "/start", None).await;
    cookie.expect("a session")
}

/// Two overlapping requests of one session: the slow one sets `a`, the quick one sets `b`.
async fn overlapping_writes(app: &Router) -> Value {
    let cookie = begin_session(app).await;
    let slow = call(app, "POST", "/set/a/300", Some(&cookie));
    let quick = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        call(app, "POST", "/set/b/0", Some(&cookie)).await
    };
    let ((slow, _, _), (quick, _, _)) = tokio::join!(slow, quick);
    assert_eq!((slow, quick), (StatusCode::OK, StatusCode::OK));
    call(app, "GET", "/show", Some(&cookie)).await.2
}

#[tokio::test]
async fn concurrent_requests_changing_different_values_both_keep_their_change() {
    let redis = RedisServer::start();
    let store = store_on(&redis, SessionLimits::default()).await;
    let shown = overlapping_writes(&app(&store, true)).await;
    assert_eq!(shown, json!({"user": "guest", "a": true, "b": true}));

    // The same requests without the scope layer: the stock whole-record save loses `b`.
    let shown = overlapping_writes(&app(&store, false)).await;
    assert_eq!(shown, json!({"user": "guest", "a": true, "b": null}), "the contrast this layer exists for");

    // With always-save every request saves, the read-only ones too (moving only the expiry):
    // still nothing is lost.
    let always = app_with(&store, true, |m| {
        m.with_expiry(Expiry::OnInactivity(time::Duration::minutes(5))).with_always_save(true)
    });
    let shown = overlapping_writes(&always).await;
    assert_eq!(shown, json!({"user": "guest", "a": true, "b": true}), "always-save merges too");
    // A slow read-only request loads, another sets `b`, then the read saves (always-save): it
    // moves the expiry only, so `b` stays.
    let cookie = begin_session(&always).await;
    let read = call(&always, "GET", "/show-after/300", Some(&cookie));
    let write = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        call(&always, "POST", "/set/b/0", Some(&cookie)).await
    };
    let ((read, _, _), (write, _, _)) = tokio::join!(read, write);
    assert_eq!((read, write), (StatusCode::OK, StatusCode::OK));
    let shown = call(&always, "GET", "/show", Some(&cookie)).await.2;
    assert_eq!(shown["b"], true, "the read's save moved only the expiry");
}

#[tokio::test]
async fn a_failed_login_leaves_the_old_session_as_it_was() {
    let redis = RedisServer::start();
    let store = store_on(&redis, SessionLimits { grace: Duration::from_millis(500), ..SessionLimits::default() }).await;
    let app = app(&store, true);
    let old = begin_session(&app).await;

    let (status, new, _) = call(&app, "POST", "/login/true", Some(&old)).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(new, None, "a failed request sets no cookie");
    assert_eq!(redis.keys("herd:sess:*").len(), 1, "the new record was removed again");
    // Still there after the grace period would have ended: the retirement was undone.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(call(&app, "GET", "/show", Some(&old)).await.2["user"], "guest");

    let (status, new, _) = call(&app, "POST", "/login/false", Some(&old)).await;
    assert_eq!(status, StatusCode::OK);
    let new = new.expect("the new id");
    assert_ne!(new, old);
    assert_eq!(call(&app, "GET", "/show", Some(&new)).await.2["user"], "alice");
    assert_eq!(call(&app, "GET", "/show", Some(&old)).await.2["user"], "guest", "the old id, in its grace period");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(call(&app, "GET", "/show", Some(&old)).await.2["user"], Value::Null, "and not after it");
    assert_eq!(call(&app, "GET", "/show", Some(&new)).await.2["user"], "alice");
}

#[tokio::test]
async fn a_late_save_never_brings_back_a_deleted_session() {
    let redis = RedisServer::start();
    let store = store_on(&redis, SessionLimits::default()).await;
    let app = app(&store, true);
    let cookie = begin_session(&app).await;
    let in_flight = call(&app, "POST", "/set/a/300", Some(&cookie));
    let logout_elsewhere = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        redis.cli(&["DEL", &redis.keys("herd:sess:*")[0]])
    };
    let ((status, _, _), deleted) = tokio::join!(in_flight, logout_elsewhere);
    assert_eq!(deleted.as_deref(), Some("1"));
    assert_eq!(status, StatusCode::OK);
    assert!(redis.keys("herd:sess:*").is_empty(), "the save did not recreate the session");
}

#[tokio::test]
async fn a_value_in_another_format_is_a_miss_not_an_error() {
    let redis = RedisServer::start();
    let store = store_on(&redis, SessionLimits::default()).await;
    let app = app(&store, true);
    let cookie = begin_session(&app).await;
    let key = redis.keys("herd:sess:*").pop().expect("the record");
    let stored = redis.cli(&["GET", &key]).expect("a record");
    assert!(stored.starts_with("h4:") && stored.contains("4:user7:\"guest\""), "{stored}");
    // Older herds wrote a JSON string (format 1) or a hash (format 2); a future one writes
    // `h5:`; someone else may have written anything.
    for older in [&["SET", &key, "h1{\"data\":{}}"][..], &["HSET", &key, "v", "2", "d:user", "\"x\""]] {
        redis.cli(&["DEL", &key]).expect("delete");
        redis.cli(older).expect("overwrite");
        let (status, _, shown) = call(&app, "GET", "/show", Some(&cookie)).await;
        assert_eq!((status, shown["user"].clone()), (StatusCode::OK, Value::Null), "{older:?}");
    }
    redis.cli(&["SET", &key, &stored.replacen("h4:", "h5:", 1)]).expect("a future format");
    assert_eq!(call(&app, "GET", "/show", Some(&cookie)).await.2["user"], Value::Null);
    // A write to a session in another format does not overwrite it.
    assert_eq!(call(&app, "POST", "/set/a/0", Some(&cookie)).await.0, StatusCode::OK);
    assert!(redis.cli(&["GET", &key]).expect("kept").starts_with("h5:"));
}

/// A session an older herd wrote (format 3: no app expiry in the header) still works after
/// an upgrade, in every script, and its next write makes it format 4.
#[tokio::test]
async fn a_format_3_session_is_read_and_upgraded_by_its_next_write() {
    let redis = RedisServer::start();
    let limits = SessionLimits { idle: Some(Duration::from_secs(60)), ..SessionLimits::default() };
    let store = store_on(&redis, limits).await;
    let app = app(&store, true);
    let cookie = begin_session(&app).await;
    let key = redis.keys("herd:sess:*").pop().expect("the record");
    let stored = redis.cli(&["GET", &key]).expect("a record");
    // `h3:{created}:{seen}:{flag}\n{entries}`, with `seen` a minute old so the read touches it.
    let seen = format!("{:016}", stored[20..36].parse::<u64>().expect("a stamp") - 60_000 + 10_000);
    let format_3 = format!("h3:{}:{seen}:-\n{}", &stored[3..19], &stored[62..]);
    redis.cli(&["SET", &key, &format_3, "PX", "60000"]).expect("an older herd's record");
    assert_eq!(call(&app, "GET", "/show", Some(&cookie)).await.2["user"], "guest");
    let touched = redis.cli(&["GET", &key]).expect("still there");
    assert!(touched.starts_with("h3:") && touched[20..36] > *seen, "the touch rewrote `seen` in place: {touched}");
    assert_eq!(call(&app, "POST", "/set/a/0", Some(&cookie)).await.0, StatusCode::OK);
    let upgraded = redis.cli(&["GET", &key]).expect("still there");
    assert!(upgraded.starts_with("h4:") && upgraded.contains("4:user7:\"guest\""), "{upgraded}");
    let shown = call(&app, "GET", "/show", Some(&cookie)).await.2;
    assert_eq!((shown["user"].clone(), shown["a"].clone()), (json!("guest"), json!(true)));
}

/// The key's TTL in ms.
fn pttl(redis: &RedisServer, key: &str) -> i64 {
    redis.cli(&["PTTL", key]).and_then(|ttl| ttl.trim().parse().ok()).expect("a TTL")
}

/// herd's idle timeout on top of a long app expiry: reads keep the session (they extend herd's
/// timeout, not the app's), idleness ends it long before the app's day is over.
#[tokio::test]
async fn herd_idle_timeout_ends_a_session_before_a_longer_app_expiry() {
    let redis = RedisServer::start();
    let idle = Duration::from_millis(800);
    let store = store_on(&redis, SessionLimits { idle: Some(idle), ..SessionLimits::default() }).await;
    let app = app_with(&store, true, |m| m.with_expiry(Expiry::OnInactivity(time::Duration::days(1))));
    let cookie = begin_session(&app).await;
    let key = redis.keys("herd:sess:*").pop().expect("the record");
    assert!(pttl(&redis, &key) <= 800, "the TTL is herd's, the earlier of the two");
    for _ in 0..4 {
        tokio::time::sleep(idle / 2).await;
        assert_eq!(call(&app, "GET", "/show", Some(&cookie)).await.2["user"], "guest", "reads keep it alive");
    }
    tokio::time::sleep(idle + Duration::from_millis(200)).await;
    assert_eq!(call(&app, "GET", "/show", Some(&cookie)).await.2["user"], Value::Null, "idle: ended");
}

/// The app's expiry before herd's limits: the app's wins, in the TTL as in the load.
#[tokio::test]
async fn an_app_expiry_before_herd_limits_ends_the_session() {
    let redis = RedisServer::start();
    let limits = SessionLimits {
        idle: Some(Duration::from_secs(600)),
        max_age: Some(Duration::from_secs(3600)),
        ..SessionLimits::default()
    };
    let store = store_on(&redis, limits).await;
    let at = time::OffsetDateTime::now_utc() + time::Duration::milliseconds(1_000);
    let app = app_with(&store, true, |m| m.with_expiry(Expiry::AtDateTime(at)));
    let cookie = begin_session(&app).await;
    let key = redis.keys("herd:sess:*").pop().expect("the record");
    assert!(pttl(&redis, &key) <= 1_000, "the TTL is the app's");
    assert_eq!(call(&app, "GET", "/show", Some(&cookie)).await.2["user"], "guest");
    tokio::time::sleep((at - time::OffsetDateTime::now_utc()).unsigned_abs() + Duration::from_millis(100)).await;
    assert_eq!(call(&app, "GET", "/show", Some(&cookie)).await.2["user"], Value::Null);
}

#[tokio::test]
async fn any_name_and_value_survive_storage_and_merged_saves() {
    let redis = RedisServer::start();
    let store = store_on(&redis, SessionLimits::default()).await;
    let app = app(&store, true);
    let (status, cookie, stored) = call(&app, "POST", "/odd/0", None).await;
    assert_eq!(status, StatusCode::OK);
    let cookie = cookie.expect("a session");
    let as_stored = Value::Object(odd_values().into_iter().map(|(name, value)| (name.to_owned(), value)).collect());
    assert_eq!(call(&app, "POST", "/odd/2", Some(&cookie)).await.2, as_stored, "read back as written");
    assert_eq!(stored, as_stored);

    let mut changed = as_stored.clone();
    changed["ü"] = json!({"k": [1, "é:"]});
    changed["a:b"] = Value::Null;
    assert_eq!(call(&app, "POST", "/odd/1", Some(&cookie)).await.2, changed);
    // Read back in a fresh request: the script's merge kept the other values byte for byte
    // (the number is beyond a double's precision, so it was never parsed on the way).
    assert_eq!(call(&app, "POST", "/odd/2", Some(&cookie)).await.2, changed);
}

#[tokio::test]
async fn redis_away_is_a_typed_503_from_the_layer() {
    let mut redis = RedisServer::start();
    let store = store_on(&redis, SessionLimits::default()).await;
    let app = app(&store, true);
    let cookie = begin_session(&app).await;
    redis.kill();
    // The handler swallows the error and says 200; the store's failure still decides.
    let (status, set_cookie, body) = call(&app, "POST", "/start", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body["error"].as_str().is_some());
    assert_eq!(set_cookie, None);
    let (status, _, _) = call(&app, "POST", "/set/a/0", Some(&cookie)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}
