//! What a Docker engine changes on the host and does not undo when it exits: iptables rules
//! (its own chains in the filter and nat tables, FORWARD's policy), `ip_forward`, and the
//! bridges it creates (docker0, one per compose network). Saved before the kit's engine starts,
//! put back after it stopped.

use std::{collections::BTreeSet, path::Path, process::Command};

use super::command::{DockerError, Run};

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// The host's network state as it was before the engine started.
pub(super) struct HostNet {
    iptables: String,
    ip_forward: String,
    bridges: BTreeSet<String>,
}

fn run(what: &str, program: &str, args: &[&str], log_dir: &Path) -> Result<String, DockerError> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    Run::new(what, cmd, super::command_timeout(), log_dir).stdout()
}

/// The tables an `iptables-save` dump holds (`*filter`, `*nat`, ...).
fn tables(dump: &str) -> BTreeSet<String> {
    dump.lines().filter_map(|l| l.strip_prefix('*')).map(str::to_owned).collect()
}

fn bridges(log_dir: &Path) -> Result<BTreeSet<String>, DockerError> {
    let out = run("list bridges", "ip", &["-o", "link", "show", "type", "bridge"], log_dir)?;
    // "5: docker0: <BROADCAST,...> ..." → docker0
    Ok(out.lines().filter_map(|l| l.split(": ").nth(1)).map(|n| n.split('@').next().unwrap_or(n).to_owned()).collect())
}

impl HostNet {
    pub(super) fn save(log_dir: &Path) -> Result<Self, DockerError> {
        let iptables = run("save iptables", "iptables-save", &[], log_dir)?;
        let ip_forward =
            std::fs::read_to_string(IP_FORWARD).map_err(|e| DockerError::io(format!("read {IP_FORWARD}"), e))?;
        Ok(Self { iptables, ip_forward, bridges: bridges(log_dir)? })
    }

    /// Puts everything back; returns what could not be (each step is tried).
    pub(super) fn restore(&self, log_dir: &Path) -> Vec<DockerError> {
        let mut errors = Vec::new();
        match bridges(log_dir) {
            Ok(now) => {
                for bridge in now.difference(&self.bridges) {
                    if let Err(e) =
                        run("delete a bridge the engine created", "ip", &["link", "delete", bridge], log_dir)
                    {
                        errors.push(e);
                    }
                }
            }
            Err(e) => errors.push(e),
        }
        errors.extend(self.restore_iptables(log_dir).err());
        if let Err(e) = std::fs::write(IP_FORWARD, &self.ip_forward) {
            errors.push(DockerError::io(format!("restore {IP_FORWARD}"), e));
        }
        errors
    }

    fn restore_iptables(&self, log_dir: &Path) -> Result<(), DockerError> {
        let now = run("save iptables after the engine", "iptables-save", &[], log_dir)?;
        // iptables-restore flushes and refills the tables the saved dump names; a table that did
        // not exist before (dockerd creates filter and nat on a bare host) is emptied instead,
        // with the policies a missing table means: accept.
        for table in tables(&now).difference(&tables(&self.iptables)) {
            run("flush an iptables table", "iptables", &["-t", table, "-F"], log_dir)?;
            run("delete its chains", "iptables", &["-t", table, "-X"], log_dir)?;
            let chains = run("list its chains", "iptables", &["-t", table, "-S"], log_dir)?;
            for chain in chains.lines().filter_map(|l| l.strip_prefix("-P ")).filter_map(|l| l.split(' ').next()) {
                run("reset a policy", "iptables", &["-t", table, "-P", chain, "ACCEPT"], log_dir)?;
            }
            // With the nftables backend the empty table itself can go too, as it was.
            if Path::new("/usr/sbin/nft").exists() && now.contains("nf_tables") {
                run("delete the nft table", "nft", &["delete", "table", "ip", table], log_dir)?;
            }
        }
        if !tables(&self.iptables).is_empty() {
            let saved = log_dir.join("iptables.saved");
            std::fs::write(&saved, &self.iptables).map_err(|e| DockerError::io("write the saved iptables", e))?;
            let file = std::fs::File::open(&saved).map_err(|e| DockerError::io("open the saved iptables", e))?;
            Run::new("iptables-restore", Command::new("iptables-restore"), super::command_timeout(), log_dir)
                .stdin(file)
                .stdout()?;
        }
        Ok(())
    }
}
