//! `rediss://` is TLS or an error, never plaintext; a private CA with `--redis-ca-cert`; the
//! password from the URL. Against Debian's `redis-server` with `--tls-port` and a certificate
//! each test generates.

use herd_e2e::{herd::assert_herd_fails, Herd, RedisServer, Tls};

const PASSWORD: &str = "s3cret-pass";

#[test]
fn sessions_work_over_tls_with_a_private_ca_and_a_password() {
    let redis = RedisServer::start_with(Some(Tls::generate()), Some(PASSWORD));
    let ca = redis.ca().expect("tls");
    let herd = Herd::start(&redis, &["--workers", "2", "--redis-ca-cert", &ca]);
    let mut client = herd.client();
    client.login();
    for visit in 1..=4 {
        let body = client.get("/").expect("GET /").json();
        assert_eq!((body["user"].clone(), body["visits"].clone()), ("alice".into(), visit.into()));
    }
    assert_eq!(redis.keys("herd:sess:*").len(), 1, "the record, over TLS");
    assert_eq!(redis.keys("herd:user:alice:logins").len(), 1, "and the login index with its visit count");
    let clients = redis.cli(&["INFO", "clients"]).unwrap_or_default();
    assert!(!clients.contains("connected_clients:0"), "herd is connected: {clients}");
}

#[test]
fn an_untrusted_certificate_is_refused() {
    let redis = RedisServer::start_with(Some(Tls::generate()), Some(PASSWORD));
    let url = redis.url();
    // The system roots do not know the test CA.
    assert_herd_fails(
        &["serve", "--bind", "127.0.0.1:0", "--redis-url", &url, "--demo-user", "a:b"],
        &[],
        1,
        &["cannot reach Redis", "rediss://***@127.0.0.1"],
    );
}

#[test]
fn rediss_never_falls_back_to_plaintext() {
    let plain = RedisServer::start_with(None, Some(PASSWORD));
    let url = plain.url().replacen("redis://", "rediss://", 1);
    // A TLS handshake with a plaintext server times out, like a Redis that is slow to come
    // up: no start wait, so the test does not sit through it.
    let stderr = assert_herd_fails(
        &["serve", "--bind", "127.0.0.1:0", "--redis-url", &url, "--demo-user", "a:b", "--redis-start-timeout", "0"],
        &[],
        1,
        &["cannot reach Redis"],
    );
    assert!(!stderr.contains(PASSWORD), "the password is never logged: {stderr}");
    assert!(plain.keys("herd:*").is_empty(), "nothing was written in plaintext");

    // A CA file for a plaintext URL is a mistake, said so.
    let tls = Tls::generate();
    let url = plain.url();
    assert_herd_fails(
        &["serve", "--bind", "127.0.0.1:0", "--redis-url", &url, "--redis-ca-cert", &tls.ca(), "--demo-user", "a:b"],
        &[],
        1,
        &["use rediss://"],
    );
}

#[test]
fn a_wrong_password_is_a_clear_error() {
    let redis = RedisServer::start_with(Some(Tls::generate()), Some(PASSWORD));
    let ca = redis.ca().expect("tls");
    let url = redis.url().replace(PASSWORD, "wrong");
    assert_herd_fails(
        &["serve", "--bind", "127.0.0.1:0", "--redis-url", &url, "--redis-ca-cert", &ca, "--demo-user", "a:b"],
        &[],
        1,
        &["cannot reach Redis"],
    );
}
