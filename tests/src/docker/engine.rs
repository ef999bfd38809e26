//! The Docker engine the compose test talks to: the kit's own `dockerd` (own socket, exec root
//! and pid file in a temporary directory; images in [`super::DATA_ROOT`]), stopped by pid on
//! drop with the host's network put back, or a `dockerd` that already ran, used as it is.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::{
    command::{tail, DockerError, Run},
    hostnet::HostNet,
    DATA_ROOT, DOCKER, DOCKERD,
};
use crate::TempDir;

/// The machine's own engine, when one runs.
const SYSTEM_SOCKET: &str = "unix:///var/run/docker.sock";

/// The kit's dockerd and what to restore when it stops.
struct Owned {
    child: Child,
    net: HostNet,
}

pub struct DockerEngine {
    /// `DOCKER_HOST` for every client.
    host: String,
    /// Socket, exec root, logs; removed on drop.
    dir: TempDir,
    /// `None` when the engine was already running: then the kit stops nothing and restores nothing.
    owned: Option<Owned>,
}

/// A `dockerd` process already on the machine (not one of the kit's: they are children).
fn running_dockerd() -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else { return false };
    entries.flatten().any(|e| std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == "dockerd"))
}

impl DockerEngine {
    /// Uses the machine's running engine (`DOCKER_HOST`, or the default socket when a `dockerd`
    /// runs), or starts the kit's own.
    pub fn start() -> Result<Self, DockerError> {
        let dir = TempDir::new("docker");
        if let Some(host) = std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()) {
            let engine = Self { host, dir, owned: None };
            engine.wait_answers(Instant::now() + super::dockerd_timeout(), None)?;
            return Ok(engine);
        }
        if running_dockerd() {
            let engine = Self { host: SYSTEM_SOCKET.to_owned(), dir, owned: None };
            engine.wait_answers(Instant::now() + super::dockerd_timeout(), None)?;
            eprintln!("using the dockerd that already runs on this machine ({SYSTEM_SOCKET})");
            return Ok(engine);
        }
        std::fs::create_dir_all(DATA_ROOT).map_err(|e| DockerError::io(format!("create {DATA_ROOT}"), e))?;
        let net = HostNet::save(dir.path())?;
        let socket = dir.path().join("docker.sock");
        let log = dir.path().join("dockerd.log");
        let log_file = std::fs::File::create(&log).map_err(|e| DockerError::io("create dockerd.log", e))?;
        let log_err = log_file.try_clone().map_err(|e| DockerError::io("dup dockerd.log", e))?;
        let child = Command::new(DOCKERD)
            .arg("--data-root")
            .arg(DATA_ROOT)
            .arg("--exec-root")
            .arg(dir.path().join("exec"))
            .arg("--pidfile")
            .arg(dir.path().join("docker.pid"))
            .arg("--host")
            .arg(format!("unix://{}", socket.display()))
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log_err)
            .spawn()
            .map_err(|source| DockerError::Spawn { what: "start dockerd".into(), command: DOCKERD.into(), source })?;
        let host = format!("unix://{}", socket.display());
        let engine = Self { host, dir, owned: Some(Owned { child, net }) };
        let deadline = Instant::now() + super::dockerd_timeout();
        engine.wait_answers(deadline, Some(&log))?;
        Ok(engine)
    }

    /// Polls `docker version` until the server answers.
    fn wait_answers(&self, deadline: Instant, log: Option<&Path>) -> Result<(), DockerError> {
        loop {
            let attempt = self.run("ask dockerd its version", &["version", "--format", "{{.Server.Version}}"]);
            match attempt {
                Ok(_) => return Ok(()),
                Err(err) if Instant::now() >= deadline => {
                    let log = log.map(|l| tail(&std::fs::read_to_string(l).unwrap_or_default())).unwrap_or_default();
                    return Err(DockerError::other(
                        "wait for dockerd to answer",
                        format!("no answer on {} by the deadline: {err}\ndockerd.log tail:\n{log}", self.host),
                    ));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// Where command output and scratch files go.
    pub fn scratch(&self) -> &Path {
        self.dir.path()
    }

    /// A docker client command talking to this engine: Debian's client first on PATH (it has
    /// BuildKit; compose v1 calls `docker` by name), BuildKit on for `docker build` and for
    /// compose v1's builds.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        let path = std::env::var("PATH").unwrap_or_default();
        cmd.env("PATH", format!("/usr/bin:{path}"))
            .env("DOCKER_HOST", &self.host)
            .env("DOCKER_BUILDKIT", "1")
            .env("COMPOSE_DOCKER_CLI_BUILD", "1");
        cmd
    }

    /// `docker <args>` with the default command timeout; its stdout.
    pub fn run(&self, what: &str, args: &[&str]) -> Result<String, DockerError> {
        self.runner(what, self.docker_cmd(args), super::command_timeout()).stdout()
    }

    /// `docker <args>` talking to this engine.
    pub fn docker_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = self.command(DOCKER);
        cmd.args(args);
        cmd
    }

    /// `cmd` as a [`Run`] named `what`, its output kept in this engine's scratch directory.
    pub fn runner(&self, what: &str, cmd: Command, timeout: Duration) -> Run {
        Run::new(what, cmd, timeout, self.scratch())
    }

    pub fn has_image(&self, name: &str) -> bool {
        self.run(&format!("inspect image {name}"), &["image", "inspect", "--format", "{{.Id}}", name]).is_ok()
    }

    /// The engine's version and the client's, for the record.
    pub fn versions(&self) -> String {
        self.run("docker version", &["version", "--format", "engine {{.Server.Version}}, client {{.Client.Version}}"])
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|e| format!("unknown ({e})"))
    }
}

impl Drop for DockerEngine {
    fn drop(&mut self) {
        let Some(owned) = &mut self.owned else { return };
        // SIGTERM: dockerd stops its containers and its containerd, then exits.
        crate::signal(owned.child.id(), nix::sys::signal::Signal::SIGTERM);
        let _ = crate::poll_every(Duration::from_millis(100), super::dockerd_timeout(), || {
            owned.child.try_wait().transpose()
        });
        if matches!(owned.child.try_wait(), Ok(None)) {
            eprintln!("dockerd did not stop within {:?} of SIGTERM: killing it", super::dockerd_timeout());
            let _ = owned.child.kill();
            let _ = owned.child.wait();
        }
        for err in owned.net.restore(self.dir.path()) {
            eprintln!("could not restore the host network after dockerd: {err}");
        }
    }
}
