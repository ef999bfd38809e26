//! `docker compose` (the plugin) or `docker-compose` (v1, Debian's package), on a project of
//! the test's own name, torn down with its volumes on drop.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use super::{command::DockerError, DockerEngine, DOCKER, DOCKER_COMPOSE};

/// The spelling this machine has; the plugin is preferred where it exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComposeTool {
    Plugin,
    V1,
}

impl ComposeTool {
    pub fn detect(engine: &DockerEngine) -> Option<Self> {
        if engine.run("docker compose version", &["compose", "version"]).is_ok() {
            return Some(Self::Plugin);
        }
        Path::new(DOCKER_COMPOSE).exists().then_some(Self::V1)
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Plugin => "docker compose",
            Self::V1 => "docker-compose",
        }
    }
}

/// The variables the compose file reads from the environment; each command sets them anew so
/// that the test's own environment never leaks in.
const PASSED: [&str; 2] = ["STICKY", "WORKERS"];

pub struct Compose<'e> {
    engine: &'e DockerEngine,
    tool: ComposeTool,
    project: String,
    dir: PathBuf,
}

impl<'e> Compose<'e> {
    /// The compose file in `dir`, as project `project`.
    pub fn new(engine: &'e DockerEngine, tool: ComposeTool, project: &str, dir: &Path) -> Self {
        Self { engine, tool, project: project.to_owned(), dir: dir.to_owned() }
    }

    pub fn tool(&self) -> ComposeTool {
        self.tool
    }

    /// The compose command with `args`, and `env` for the compose file's variables.
    pub fn command(&self, args: &[&str], env: &[(&str, &str)]) -> Command {
        let mut cmd = match self.tool {
            ComposeTool::Plugin => {
                let mut cmd = self.engine.command(DOCKER);
                cmd.arg("compose");
                cmd
            }
            ComposeTool::V1 => self.engine.command(DOCKER_COMPOSE),
        };
        cmd.current_dir(&self.dir).args(["-p", &self.project, "-f", "docker-compose.yml"]).args(args);
        for name in PASSED {
            cmd.env_remove(name);
        }
        cmd.envs(env.iter().copied());
        cmd
    }

    /// Runs `compose <args>` within `timeout`; its stdout. `what` names the step in errors.
    pub fn run(
        &self,
        what: &str,
        args: &[&str],
        env: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<String, DockerError> {
        self.engine.runner(what, self.command(args, env), timeout).stdout()
    }

    /// The container id of `service` (running or stopped).
    pub fn container(&self, service: &str) -> Result<String, DockerError> {
        let out =
            self.run(&format!("find the {service} container"), &["ps", "-q", service], &[], super::command_timeout())?;
        out.lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| DockerError::other(format!("find the {service} container"), "compose ps shows none"))
    }

    /// `docker inspect --format <format>` of `service`'s container.
    pub fn inspect(&self, service: &str, format: &str) -> Result<String, DockerError> {
        let id = self.container(service)?;
        let out =
            self.engine.run(&format!("inspect the {service} container"), &["inspect", "--format", format, &id])?;
        Ok(out.trim().to_owned())
    }

    /// Everything `service` printed so far.
    pub fn logs(&self, service: &str) -> Result<String, DockerError> {
        let cmd = self.command(&["logs", "--no-color", service], &[]);
        let (stdout, stderr) =
            self.engine.runner(&format!("the {service} logs"), cmd, super::command_timeout()).output()?;
        Ok(format!("{stdout}{stderr}"))
    }

    /// `compose down -v`: containers, network and volumes gone.
    pub fn down(&self) -> Result<String, DockerError> {
        self.run("compose down -v", &["down", "-v", "--remove-orphans"], &[], super::command_timeout())
    }
}

impl Drop for Compose<'_> {
    fn drop(&mut self) {
        if let Err(err) = self.down() {
            eprintln!("could not take the compose project {} down: {err}", self.project);
        }
    }
}
