//! Redis Cluster is how one Redis grows: sessions, users, rate limits and the cache work
//! unchanged against three primaries the test starts (`redis-cluster://…?node=…`). Every
//! command and script herd sends touches one key, so nothing needs a shared slot.

use std::collections::HashSet;

use herd_e2e::{Herd, RedisCluster};

#[test]
fn sessions_users_rate_limits_and_the_cache_work_on_a_redis_cluster() {
    let cluster = RedisCluster::start();
    let herd = Herd::start_at(&cluster.url(), &["--workers", "2"], &[]);

    // Sessions shared by the workers, visits exact.
    let mut devices: Vec<herd_e2e::Client> =
        (2..6).map(|n| herd.client().from_ip(std::net::IpAddr::from([127, 0, 0, n]))).collect();
    for device in &mut devices {
        device.login();
        for visit in 1..=3 {
            let body = device.get("/").expect("GET /").json();
            assert_eq!((body["user"].clone(), body["visits"].clone()), ("alice".into(), visit.into()));
        }
    }
    // The keys really are spread over the nodes.
    let holding = cluster.nodes.iter().filter(|n| !n.keys("herd:*").is_empty()).count();
    assert!(holding >= 2, "herd's keys sit on {holding} node(s) only");

    // Log out everywhere: the index and the sessions live in different slots.
    let out = devices[0].request("POST", "/logout?all=true", &[], b"").expect("logout everywhere");
    assert_eq!(out.json()["ended_elsewhere"], 3, "{}", out.body);
    for device in &devices {
        assert!(device.get("/me").expect("GET /me").json()["user"].is_null());
    }

    // Rate limits.
    let guess = herd.client().from_ip(std::net::IpAddr::from([127, 0, 0, 9]));
    let statuses: Vec<u16> = (0..6)
        .map(|_| guess.post_json("/login", r#"{"username":"alice","password":"guess"}"#).expect("login").status)
        .collect();
    assert_eq!(statuses, [401, 401, 401, 401, 401, 429]);

    // The cache, with single flight across workers.
    let answers: Vec<serde_json::Value> = (0..20)
        .map(|_| {
            let client = herd.client();
            std::thread::spawn(move || client.get("/heavy/cached?n=3000000").expect("GET /heavy/cached").json())
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().expect("client thread"))
        .collect();
    assert_eq!(answers.iter().filter(|a| a["cached"] == false).count(), 1, "{answers:?}");
    let pids: HashSet<_> = answers.iter().map(|a| a["pid"].clone()).collect();
    assert_eq!(pids.len(), 2, "both workers answered");
    assert_eq!(herd.client().get("/readyz").expect("readyz").status, 200);
}
