//! Messaging between the processes, through what the app builds on it: `/stats` gathers every
//! worker's counters, and broadcasts (from a worker or from `herd ctl`) reach every worker
//! exactly once, in order.

use std::time::Duration;

use herd_e2e::{wait_for, Herd, RedisServer};
use serde_json::{json, Value};

fn get_stats(herd: &Herd) -> Value {
    let res = herd.client().get("/stats").expect("GET /stats");
    assert_eq!(res.status, 200, "{}", res.body);
    res.json()
}

#[test]
fn stats_gathers_every_workers_counters() {
    let redis = RedisServer::start();
    let herd = Herd::start(&redis, &["--workers", "4"]);
    for _ in 0..40 {
        assert_eq!(herd.client().get("/healthz").expect("GET").status, 200);
    }
    let stats = get_stats(&herd);
    let workers = stats["workers"].as_array().expect("workers");
    assert_eq!(workers.len(), 4, "{stats}");
    assert_eq!(stats["requests"], 40, "{stats}");
    assert_eq!(workers.iter().map(|w| w["requests"].as_u64().expect("requests")).sum::<u64>(), 40);
    let slots: Vec<u64> = workers.iter().map(|w| w["slot"].as_u64().expect("slot")).collect();
    assert_eq!(slots, [0, 1, 2, 3]);
}

#[test]
fn broadcasts_reach_every_worker_once_and_in_order() {
    let redis = RedisServer::start();
    let herd = Herd::start(&redis, &["--workers", "3", "--admin-routes"]);
    for i in 0..5 {
        let (code, out, err) = herd.ctl(&["broadcast", &json!({ "type": "note", "note": i }).to_string()]);
        assert_eq!((code, out.trim()), (0, "sent to 3 worker(s)"), "{err}");
    }
    let (code, _, _) = herd.ctl(&["send", "1", r#"{"type":"note","note":"only one"}"#]);
    assert_eq!(code, 0);
    let stats = wait_for("every worker to get the notes", Duration::from_secs(10), || {
        let stats = get_stats(&herd);
        stats["workers"]
            .as_array()
            .expect("workers")
            .iter()
            .all(|w| w["notes"].as_array().is_some_and(|n| n.len() >= 5))
            .then_some(stats)
    });
    for worker in stats["workers"].as_array().expect("workers") {
        let mut expected: Vec<Value> = (0..5).map(Value::from).collect();
        if worker["slot"] == 1 {
            expected.push(json!("only one"));
        }
        assert_eq!(worker["notes"].as_array().expect("notes"), &expected, "slot {}", worker["slot"]);
    }

    // A worker broadcasts through the primary: every worker resets exactly once.
    for _ in 0..6 {
        herd.client().get("/healthz").expect("GET");
    }
    let res = herd.client().request("POST", "/stats/reset", &[], b"").expect("reset");
    assert_eq!(res.status, 202);
    let stats = wait_for("every worker to reset", Duration::from_secs(10), || {
        let stats = get_stats(&herd);
        stats["workers"].as_array().expect("workers").iter().all(|w| w["resets"] == 1).then_some(stats)
    });
    assert_eq!(stats["requests"], 0, "{stats}");

    let (code, _, err) = herd.ctl(&["broadcast", "not json"]);
    assert_eq!(code, 1);
    assert!(err.contains("must be JSON"), "{err}");
}
