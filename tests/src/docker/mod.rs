//! A real Docker engine for the compose test: the kit starts its own `dockerd` (or uses one
//! that already runs on the machine, without touching it), builds offline stand-ins for the
//! base images the product's Dockerfile and compose file name, and drives `docker compose`.
//!
//! Limits, each an environment variable with a default:
//! - `HERD_E2E_DOCKERD_TIMEOUT` (seconds, default 60): how long `dockerd` may take to answer,
//!   and to stop on drop;
//! - `HERD_E2E_DOCKER_BUILD_TIMEOUT` (seconds, default 1800): one image build, stand-in or
//!   product (a cold `cargo build --release` on 2 cores takes about 5 minutes);
//! - `HERD_E2E_DOCKER_TIMEOUT` (seconds, default 120): every other docker command.
//!
//! Whoever runs it needs root (dockerd, iptables) and `docker.io`, `docker-compose` and
//! `debootstrap` (Debian packages). [`skip_reason`] says what is missing.

mod command;
mod compose;
mod engine;
mod hostnet;
mod standins;

pub use command::{DockerError, Run};
pub use compose::{Compose, ComposeTool};
pub use engine::DockerEngine;
pub use standins::ensure_base_images;

use std::{path::Path, time::Duration};

/// Debian's client: BuildKit is built in (the machine's `/usr/local/bin/docker` has no buildx).
pub const DOCKER: &str = "/usr/bin/docker";
pub const DOCKERD: &str = "/usr/sbin/dockerd";
pub const DOCKER_COMPOSE: &str = "/usr/bin/docker-compose";
pub const DEBOOTSTRAP: &str = "/usr/sbin/debootstrap";
/// Where the kit's engine keeps images and the build cache between runs (the stand-ins and the
/// cargo cache survive; a fresh machine starts cold).
pub const DATA_ROOT: &str = "/var/cache/herd-e2e/docker";

fn env_secs(name: &str, default: u64) -> Duration {
    let secs = std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    Duration::from_secs(secs)
}

/// How long `dockerd` may take to answer after start, and to exit after SIGTERM.
pub fn dockerd_timeout() -> Duration {
    env_secs("HERD_E2E_DOCKERD_TIMEOUT", 60)
}

/// How long one image build may take.
pub fn build_timeout() -> Duration {
    env_secs("HERD_E2E_DOCKER_BUILD_TIMEOUT", 1800)
}

/// How long any other docker command may take.
pub fn command_timeout() -> Duration {
    env_secs("HERD_E2E_DOCKER_TIMEOUT", 120)
}

/// Why the Docker tests cannot run here, or `None` when they can.
pub fn skip_reason() -> Option<String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Some("not root (dockerd and iptables need root)".to_owned());
    }
    let missing: Vec<&str> =
        [DOCKER, DOCKERD, DEBOOTSTRAP].into_iter().filter(|tool| !Path::new(tool).exists()).collect();
    if !missing.is_empty() {
        return Some(format!(
            "{} missing (apt-get install -y docker.io docker-compose debootstrap)",
            missing.join(", ")
        ));
    }
    None
}

/// True when Docker can run here; false after a loud message saying why not, unless
/// `HERD_REQUIRE_DOCKER` is set (CI sets it): then it panics.
pub fn available(test: &str) -> bool {
    let Some(why) = skip_reason() else { return true };
    if std::env::var_os("HERD_REQUIRE_DOCKER").is_some() {
        panic!("{test} required (HERD_REQUIRE_DOCKER) but {why}");
    }
    eprintln!("\n*** SKIPPED {test}: {why} ***\n");
    false
}
