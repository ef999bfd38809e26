//! Offline stand-ins for the three base images the Dockerfile and the compose file name, for a
//! machine with no registry to pull from. Each is built only when no image of that name exists,
//! so a machine that pulled (or can pull) the real ones uses those; the engine's data root
//! keeps them between runs. They belong to the test kit, never to the product.
//!
//! - `debian:bookworm-slim`: `debootstrap --variant=minbase bookworm`, imported, without the
//!   downloaded packages, apt lists and docs (as the real slim image has none).
//! - `rust:1-bookworm`: that plus gcc/libc6-dev, this machine's rustup stable toolchain and the
//!   CA bundle `SSL_CERT_FILE` names (so cargo in the build stage trusts what this machine
//!   trusts), laid out as the official image is (`/usr/local/cargo`, `/usr/local/rustup`).
//! - `redis:7-alpine`: Debian's redis-server on the slim stand-in, with the official image's
//!   conventions: `/data` as working directory, `redis-server` and `redis-cli` on PATH, and
//!   protected mode off (the official image builds redis that way; without it herd in the
//!   other container is refused with `DENIED ... protected mode`).

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use super::{command::DockerError, DockerEngine, DEBOOTSTRAP};
use crate::TempDir;

pub(super) const DEBIAN: &str = "debian:bookworm-slim";
pub(super) const RUST: &str = "rust:1-bookworm";
pub(super) const REDIS: &str = "redis:7-alpine";

/// Where the stand-in keeps the toolchain, as the official rust image does.
const RUSTUP_HOME: &str = "/usr/local/rustup";
const CARGO_HOME: &str = "/usr/local/cargo";
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Builds the stand-ins that are missing; returns what it built and how long each took.
pub fn ensure_base_images(engine: &DockerEngine) -> Result<Vec<(String, std::time::Duration)>, DockerError> {
    let mut built = Vec::new();
    for (name, build) in
        [(DEBIAN, debian as fn(&DockerEngine) -> Result<(), DockerError>), (RUST, rust), (REDIS, redis)]
    {
        if engine.has_image(name) {
            continue;
        }
        let started = Instant::now();
        build(engine)?;
        built.push((name.to_owned(), started.elapsed()));
        eprintln!("built the stand-in {name} in {:?}", started.elapsed());
    }
    Ok(built)
}

fn debian(engine: &DockerEngine) -> Result<(), DockerError> {
    let root = TempDir::new("debootstrap");
    let rootfs = root.path().join("rootfs");
    let mut cmd = Command::new(DEBOOTSTRAP);
    cmd.args(["--variant=minbase", "bookworm"]).arg(&rootfs);
    engine.runner("debootstrap the debian stand-in", cmd, super::build_timeout()).stdout()?;
    let mut tar = Command::new("tar");
    tar.arg("-C").arg(&rootfs);
    for excluded in
        ["./var/cache/apt/archives/*.deb", "./var/lib/apt/lists/*", "./usr/share/doc/*", "./usr/share/man/*"]
    {
        tar.arg(format!("--exclude={excluded}"));
    }
    let mut tar = tar.args(["-c", "."]).stdout(Stdio::piped()).spawn().map_err(|source| DockerError::Spawn {
        what: "tar the rootfs".into(),
        command: "tar".into(),
        source,
    })?;
    let stream = tar.stdout.take().ok_or_else(|| DockerError::other("tar the rootfs", "no stdout pipe"))?;
    let import = engine.docker_cmd(&["import", "--change", r#"CMD ["bash"]"#, "-", DEBIAN]);
    let imported =
        engine.runner("docker import the debian stand-in", import, super::build_timeout()).stdin(stream).stdout();
    let tar_status = tar.wait().map_err(|e| DockerError::io("wait for tar", e))?;
    imported?;
    if !tar_status.success() {
        return Err(DockerError::other("tar the rootfs", format!("tar exited {tar_status}")));
    }
    Ok(())
}

/// A container of `from` that runs `script`, receives `copies` (host path, container dir), and
/// is committed as `name` with `changes` (Dockerfile instructions). Removed either way.
fn commit(
    engine: &DockerEngine,
    from: &str,
    name: &str,
    script: &str,
    copies: &[(&Path, &str)],
    changes: &[String],
) -> Result<(), DockerError> {
    let container = format!("herd-e2e-standin-{}", name.replace([':', '.'], "-"));
    let _ = engine.run("remove a stale stand-in container", &["rm", "-f", &container]);
    let result = (|| {
        let run = engine.docker_cmd(&["run", "--name", &container, from, "sh", "-ec", script]);
        engine.runner(&format!("prepare the {name} stand-in"), run, super::build_timeout()).stdout()?;
        for (src, dest) in copies {
            let target = format!("{container}:{dest}");
            let src = src.to_string_lossy();
            let cp = engine.docker_cmd(&["cp", "-L", &src, &target]);
            engine.runner(&format!("copy {src} into the {name} stand-in"), cp, super::build_timeout()).stdout()?;
        }
        let mut args = vec!["commit".to_owned()];
        for change in changes {
            args.push("--change".to_owned());
            args.push(change.clone());
        }
        args.extend([container.clone(), name.to_owned()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        engine.run(&format!("commit the {name} stand-in"), &args).map(|_| ())
    })();
    let _ = engine.run("remove the stand-in container", &["rm", "-f", &container]);
    result
}

/// This machine's rustup stable toolchain directory (what `rustc` runs from).
fn toolchain() -> Result<PathBuf, DockerError> {
    let out = Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .map_err(|e| DockerError::io("find the rust toolchain (rustc --print sysroot)", e))?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let dir =
        std::fs::canonicalize(&sysroot).map_err(|e| DockerError::io(format!("toolchain {}", sysroot.display()), e))?;
    // Its bin/ and lib/ are copied whole: that must be a rustup toolchain directory, not a
    // distribution's rustc living in /usr.
    if !dir.parent().is_some_and(|p| p.ends_with("toolchains")) {
        return Err(DockerError::other(
            "find the rust toolchain",
            format!("{} is not a rustup toolchain directory (install Rust with rustup)", dir.display()),
        ));
    }
    Ok(dir)
}

fn rust(engine: &DockerEngine) -> Result<(), DockerError> {
    let toolchain = toolchain()?;
    let dest = format!("{RUSTUP_HOME}/toolchains/stable-x86_64-unknown-linux-gnu");
    let ca = std::env::var("SSL_CERT_FILE").unwrap_or_else(|_| CA_BUNDLE.to_owned());
    // cargo, rustc, rustdoc straight from the toolchain: no rustup proxies, one toolchain.
    let script = format!(
        "apt-get update; apt-get install -y --no-install-recommends gcc libc6-dev; rm -rf /var/lib/apt/lists/*; \
         mkdir -p {dest} {CARGO_HOME}/bin /etc/ssl/certs; \
         for tool in cargo rustc rustdoc; do ln -s {dest}/bin/$tool {CARGO_HOME}/bin/$tool; done"
    );
    // Only bin/ and lib/: the toolchain's share/ is 0.8 GB of documentation.
    let (bin, lib) = (toolchain.join("bin"), toolchain.join("lib"));
    let ca = PathBuf::from(ca);
    let env = |k: &str, v: &str| format!("ENV {k}={v}");
    let changes = [
        env("RUSTUP_HOME", RUSTUP_HOME),
        env("CARGO_HOME", CARGO_HOME),
        env("PATH", &format!("{CARGO_HOME}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")),
        env("SSL_CERT_FILE", CA_BUNDLE),
        env("CARGO_HTTP_CAINFO", CA_BUNDLE),
        r#"CMD ["bash"]"#.to_owned(),
    ];
    commit(engine, DEBIAN, RUST, &script, &[(&bin, &dest), (&lib, &dest), (&ca, CA_BUNDLE)], &changes)
}

fn redis(engine: &DockerEngine) -> Result<(), DockerError> {
    // The wrapper turns protected mode off after whatever arguments the caller gives (a config
    // file first, options after: both still work), as the official image's build does.
    let script = "apt-get update; apt-get install -y --no-install-recommends redis-server; \
                  rm -rf /var/lib/apt/lists/*; mkdir -p /data; \
                  printf '#!/bin/sh\\nexec /usr/bin/redis-server \"$@\" --protected-mode no\\n' > /usr/local/bin/redis-server; \
                  chmod 755 /usr/local/bin/redis-server";
    let changes = ["WORKDIR /data", "VOLUME /data", "EXPOSE 6379", r#"CMD ["redis-server"]"#].map(str::to_owned);
    commit(engine, DEBIAN, REDIS, script, &[], &changes)
}
