//! The build identifier that `herd --version` shows beside the version, so an operator can tell
//! which code each binary runs: `HERD_BUILD_ID` if the build sets it (a build outside a git
//! checkout, such as the Docker image), else the git commit it was built from, else `unknown`.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn main() {
    println!("cargo:rerun-if-env-changed=HERD_BUILD_ID");
    // A checkout rewrites HEAD and a commit the index; the paths come from git itself, so this
    // also holds in a worktree.
    for file in ["HEAD", "index"] {
        if let Some(path) = git(&["rev-parse", "--git-path", file]) {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    let id = std::env::var("HERD_BUILD_ID")
        .ok()
        .filter(|id| !id.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]));
    println!("cargo:rustc-env=HERD_BUILD_ID={}", id.as_deref().unwrap_or("unknown"));
}
