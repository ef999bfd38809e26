//! The compose file and the Dockerfile read as text, in every run and on machines without
//! Docker: service names, ports, environment variables that herd really reads, healthchecks that
//! use commands present in their images, and a Dockerfile that builds the binary and runs it as
//! a non-root user. tests/tests/compose.rs runs them for real where a Docker engine can run.

use std::{collections::BTreeSet, process::Command};

use herd_e2e::herd::herd_bin;
use serde_yaml::Value;

fn repo_file(name: &str) -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../").to_owned() + name;
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

fn compose() -> Value {
    serde_yaml::from_str(&repo_file("docker-compose.yml")).expect("docker-compose.yml is valid YAML")
}

/// Every environment variable named in `herd serve --help` (`[env: NAME=…]`).
fn env_vars_herd_reads() -> BTreeSet<String> {
    let out = Command::new(herd_bin()).args(["serve", "--help"]).output().expect("herd serve --help");
    let help = String::from_utf8_lossy(&out.stdout);
    help.split("[env: ").skip(1).filter_map(|rest| rest.split(['=', ']']).next()).map(str::to_owned).collect()
}

#[test]
fn compose_wires_redis_and_herd_together() {
    let doc = compose();
    let redis = &doc["services"]["redis"];
    let herd = &doc["services"]["herd"];

    assert!(redis["image"].as_str().is_some_and(|i| i.starts_with("redis:7")), "Redis 7 image");
    let command: Vec<&str> =
        redis["command"].as_sequence().expect("redis command").iter().filter_map(Value::as_str).collect();
    assert!(command.windows(2).any(|w| w == ["--appendonly", "yes"]), "AOF on: {command:?}");
    let volume = redis["volumes"][0].as_str().expect("a redis volume");
    let (name, target) = volume.split_once(':').expect("name:path");
    assert_eq!(target, "/data", "the redis image keeps its data in /data");
    assert!(doc["volumes"].get(name).is_some(), "volume {name} is a declared named volume");
    let check: Vec<&str> =
        redis["healthcheck"]["test"].as_sequence().expect("healthcheck").iter().filter_map(Value::as_str).collect();
    assert_eq!(check, ["CMD", "redis-cli", "ping"], "redis-cli ships in the redis image");

    assert_eq!(herd["build"].as_str(), Some("."));
    assert_eq!(herd["depends_on"]["redis"]["condition"].as_str(), Some("service_healthy"));
    let ports: Vec<&str> = herd["ports"].as_sequence().expect("ports").iter().filter_map(Value::as_str).collect();
    assert_eq!(ports, ["127.0.0.1:3000:3000"], "published on loopback only: the demo cookies are not Secure");
    assert_eq!(
        herd["restart"].as_str(),
        Some("unless-stopped"),
        "herd exits when Redis stays away; Docker restarts it"
    );

    let env = herd["environment"].as_mapping().expect("environment");
    let reads = env_vars_herd_reads();
    for key in env.keys().filter_map(Value::as_str) {
        assert!(reads.contains(key), "herd does not read {key}; it reads {reads:?}");
    }
    assert_eq!(env[&Value::from("REDIS_URL")].as_str(), Some("redis://redis:6379"), "the redis service by name");
    assert_eq!(env[&Value::from("HERD_BIND")].as_str(), Some("0.0.0.0:3000"), "matches the published port");
    assert_eq!(env[&Value::from("STICKY")].as_str(), Some("${STICKY:-0}"), "STICKY passes through");
    assert_eq!(env[&Value::from("HERD_DEMO_USER")].as_str(), Some("alice:wonderland"));
}

#[test]
fn the_image_builds_herd_and_runs_it_unprivileged() {
    let dockerfile = repo_file("Dockerfile");
    let froms: Vec<&str> = dockerfile.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(froms.len(), 2, "a build stage and a small runtime stage: {froms:?}");
    assert!(froms[0].contains("rust:") && froms[0].ends_with("AS build"));
    assert!(froms[1].contains("-slim"), "small runtime image");
    assert!(dockerfile.contains("cargo build --release --locked -p herd"));
    assert!(
        std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.lock")).exists(),
        "--locked needs Cargo.lock"
    );
    let user = dockerfile.lines().rev().find_map(|l| l.strip_prefix("USER ")).expect("a USER line");
    assert_ne!(user.trim(), "root");
    assert!(dockerfile.contains("EXPOSE 3000"));
    assert!(dockerfile.contains(r#"ENTRYPOINT ["herd"]"#) && dockerfile.contains(r#"CMD ["serve"]"#));
    let ignored: Vec<String> = repo_file(".dockerignore").lines().map(str::to_owned).collect();
    assert!(ignored.iter().any(|l| l == "target"), "target/ must not be sent to the build");
}
