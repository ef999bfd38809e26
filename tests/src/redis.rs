//! A private `redis-server` for one test: free port, own directory, append-only file with
//! `fsync` on every write so a `kill -9` loses nothing that was acknowledged.

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::{wait_for, TempDir};

pub struct RedisServer {
    pub port: u16,
    dir: TempDir,
    child: Option<Child>,
    tls: Option<Tls>,
    password: Option<String>,
    cluster_node: bool,
    /// More `redis-server` arguments, after the kit's own (so they win): `--maxmemory 2mb`, say.
    extra_args: Vec<String>,
}

/// A CA and a server certificate for 127.0.0.1 it signed, made with `openssl` for one test.
pub struct Tls {
    dir: TempDir,
}

impl Tls {
    pub fn generate() -> Self {
        let dir = TempDir::new("tls");
        let sh = r#"set -e
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=herd-test-ca -keyout ca.key -out ca.crt
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=localhost \
  -keyout server.key -out server.csr
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' > ext
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile ext -out server.crt
"#;
        let out =
            Command::new("sh").arg("-c").arg(sh).current_dir(dir.path()).output().expect("openssl must be installed");
        assert!(out.status.success(), "openssl: {}", String::from_utf8_lossy(&out.stderr));
        Tls { dir }
    }

    /// The CA certificate (PEM) clients must trust.
    pub fn ca(&self) -> String {
        self.dir.path().join("ca.crt").display().to_string()
    }

    fn file(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

impl RedisServer {
    pub fn start() -> Self {
        Self::start_with(None, None)
    }

    /// A plain server with more `redis-server` arguments (they override the kit's defaults).
    pub fn start_with_args(args: &[&str]) -> Self {
        let mut server = Self::unstarted(None, None);
        server.extra_args = args.iter().map(|a| (*a).to_owned()).collect();
        server.restart();
        server
    }

    /// A plain server on this port (one a test told herd about before anything listened there).
    pub fn start_on(port: u16) -> Self {
        let mut server = Self::unstarted(None, None);
        server.port = port;
        server.restart();
        server
    }

    fn unstarted(tls: Option<Tls>, password: Option<&str>) -> Self {
        RedisServer {
            port: crate::free_port(),
            dir: TempDir::new("redis"),
            child: None,
            tls,
            password: password.map(str::to_owned),
            cluster_node: false,
            extra_args: Vec::new(),
        }
    }

    /// A server that speaks only TLS (with `tls`' certificate) and, if given, wants a password.
    pub fn start_with(tls: Option<Tls>, password: Option<&str>) -> Self {
        let mut server = Self::unstarted(tls, password);
        server.restart();
        server
    }

    /// How herd reaches this server: `rediss://` with the password for a TLS one.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "rediss" } else { "redis" };
        let auth = self.password.as_ref().map(|p| format!("default:{p}@")).unwrap_or_default();
        format!("{scheme}://{auth}127.0.0.1:{}", self.port)
    }

    /// The CA to trust, for a TLS server.
    pub fn ca(&self) -> Option<String> {
        self.tls.as_ref().map(Tls::ca)
    }

    /// Starts (again) on the same port and directory, so data comes back from the AOF.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "redis-server already running");
        let mut command = Command::new("redis-server");
        let port = self.port.to_string();
        match &self.tls {
            None => command.args(["--port", &port]),
            Some(tls) => command
                .args(["--port", "0", "--tls-port", &port, "--tls-auth-clients", "no"])
                .args(["--tls-cert-file", &tls.file("server.crt"), "--tls-key-file", &tls.file("server.key")])
                .args(["--tls-ca-cert-file", &tls.ca()]),
        };
        if let Some(password) = &self.password {
            command.args(["--requirepass", password]);
        }
        if self.cluster_node {
            command.args(["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]);
        }
        let child = command
            .args(["--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra_args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install redis-server)");
        self.child = Some(child);
        wait_for("redis-server to answer PING", Duration::from_secs(10), || {
            (self.cli(&["PING"]).as_deref() == Some("PONG")).then_some(())
        });
    }

    /// The running server's pid (to freeze it with `SIGSTOP`, say).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("redis-server is not running").id()
    }

    /// SIGKILL, like a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Runs one command through `redis-cli`; `None` if Redis did not answer.
    pub fn cli(&self, args: &[&str]) -> Option<String> {
        let mut command = Command::new("redis-cli");
        command.args(["-p", &self.port.to_string(), "--raw"]);
        if let Some(tls) = &self.tls {
            command.args(["--tls", "--cacert", &tls.ca()]);
        }
        if let Some(password) = &self.password {
            command.args(["--no-auth-warning", "-a", password]);
        }
        let out = command.args(args).stderr(Stdio::null()).output().ok()?;
        let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        (out.status.success() && !text.starts_with("Could not connect")).then_some(text)
    }

    /// Keys matching `pattern`.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        self.cli(&["KEYS", pattern])
            .map(|s| s.lines().filter(|l| !l.is_empty()).map(str::to_owned).collect())
            .unwrap_or_default()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Redis Cluster of three primaries on loopback, slots spread by `redis-cli --cluster
/// create`; with [`RedisCluster::start_with_replicas`] each primary has a replica, and a node
/// that does not answer for a second is failed over.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start() -> Self {
        Self::start_with(0)
    }

    /// Three primaries and three replicas (`nodes[0..3]` start as the primaries).
    pub fn start_with_replicas() -> Self {
        Self::start_with(1)
    }

    fn start_with(replicas: usize) -> Self {
        let nodes: Vec<RedisServer> = (0..3 * (1 + replicas))
            .map(|_| {
                let mut node = RedisServer {
                    port: crate::free_port(),
                    dir: TempDir::new("redis-cluster"),
                    child: None,
                    tls: None,
                    password: None,
                    cluster_node: true,
                    // A replica's first sync starts at once, not after Redis's default 5 s wait
                    // for more replicas to share one diskless transfer.
                    extra_args: ["--cluster-node-timeout", "1000", "--repl-diskless-sync-delay", "0"]
                        .map(str::to_owned)
                        .to_vec(),
                };
                node.restart();
                node
            })
            .collect();
        let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .expect("redis-cli");
        assert!(out.status.success(), "cluster create: {}", String::from_utf8_lossy(&out.stdout));
        for node in &nodes {
            wait_for("the cluster to agree on its slots", Duration::from_secs(20), || {
                node.cli(&["CLUSTER", "INFO"]).filter(|info| info.contains("cluster_state:ok")).map(|_| ())
            });
        }
        if replicas > 0 {
            for node in &nodes {
                wait_for("every node to see every replica", Duration::from_secs(20), || {
                    let listed = node.cli(&["CLUSTER", "NODES"])?;
                    (listed.lines().filter(|l| l.contains("slave") && !l.contains("fail")).count() == 3).then_some(())
                });
            }
        }
        RedisCluster { nodes }
    }

    /// The node serving `key` as a primary, by its index in `nodes`.
    pub fn primary_of(&self, key: &str) -> usize {
        let slot = self.nodes[0].cli(&["CLUSTER", "KEYSLOT", key]).expect("CLUSTER KEYSLOT");
        let listed = self.nodes[0].cli(&["CLUSTER", "NODES"]).expect("CLUSTER NODES");
        let slot: u32 = slot.trim().parse().expect("a slot");
        let port = listed
            .lines()
            .filter(|l| l.contains("master") && !l.contains("fail"))
            .find(|l| {
                l.split_whitespace().skip(8).any(|range| match range.split_once('-') {
                    Some((a, b)) => {
                        a.parse::<u32>().is_ok_and(|a| a <= slot) && b.parse::<u32>().is_ok_and(|b| slot <= b)
                    }
                    None => range.parse::<u32>() == Ok(slot),
                })
            })
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|addr| addr.split('@').next()?.rsplit(':').next()?.parse::<u16>().ok())
            .expect("a primary for the slot");
        self.nodes.iter().position(|n| n.port == port).expect("one of ours")
    }

    /// Waits until every live node reports the cluster healthy again.
    pub fn wait_healthy(&self) {
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            wait_for("the cluster to be healthy", Duration::from_secs(30), || {
                node.cli(&["CLUSTER", "INFO"]).filter(|info| info.contains("cluster_state:ok")).map(|_| ())
            });
        }
    }

    /// fred's cluster URL: one seed node, the others as `node=` parameters.
    pub fn url(&self) -> String {
        let others: Vec<String> = self.nodes[1..].iter().map(|n| format!("node=127.0.0.1:{}", n.port)).collect();
        format!("redis-cluster://127.0.0.1:{}?{}", self.nodes[0].port, others.join("&"))
    }

    /// Keys matching `pattern` on every node.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        self.nodes.iter().flat_map(|n| n.keys(pattern)).collect()
    }
}

/// The service name the kit's sentinels watch.
pub const SENTINEL_SERVICE: &str = "mymaster";

/// Redis with Sentinel on loopback: a master, one replica and three sentinels (quorum 2) that
/// call the master down after one second without an answer.
pub struct RedisSentinels {
    pub master: RedisServer,
    pub replica: RedisServer,
    sentinels: Vec<(u16, Child, TempDir)>,
}

impl RedisSentinels {
    pub fn start() -> Self {
        let master = RedisServer::start();
        let replica = RedisServer::start_with_args(&["--replicaof", "127.0.0.1", &master.port.to_string()]);
        let sentinels = (0..3)
            .map(|_| {
                let port = crate::free_port();
                let dir = TempDir::new("sentinel");
                let conf = dir.path().join("sentinel.conf");
                let text = format!(
                    "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor {SENTINEL_SERVICE} 127.0.0.1 {} 2\n\
                     sentinel down-after-milliseconds {SENTINEL_SERVICE} 1000\n\
                     sentinel failover-timeout {SENTINEL_SERVICE} 5000\n",
                    dir.path().display(),
                    master.port
                );
                std::fs::write(&conf, text).expect("write sentinel.conf");
                let child = Command::new("redis-server")
                    .arg(&conf)
                    .arg("--sentinel")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("redis-server --sentinel");
                (port, child, dir)
            })
            .collect();
        let group = RedisSentinels { master, replica, sentinels };
        for (port, _, _) in &group.sentinels {
            wait_for("a sentinel to know the replica", Duration::from_secs(30), || {
                let out = Command::new("redis-cli")
                    .args(["-p", &port.to_string(), "--raw", "SENTINEL", "REPLICAS", SENTINEL_SERVICE])
                    .output()
                    .ok()?;
                String::from_utf8_lossy(&out.stdout).contains(&group.replica.port.to_string()).then_some(())
            });
        }
        group
    }

    /// fred's Sentinel URL: the first sentinel, the others as `node=` parameters.
    pub fn url(&self) -> String {
        let mut ports = self.sentinels.iter().map(|(port, _, _)| *port);
        let first = ports.next().expect("three sentinels");
        let others: Vec<String> = ports.map(|port| format!("&node=127.0.0.1:{port}")).collect();
        format!("redis-sentinel://127.0.0.1:{first}?sentinelServiceName={SENTINEL_SERVICE}{}", others.concat())
    }

    /// Waits until the replica has every write the master acknowledged (their offsets agree).
    pub fn wait_replicated(&self) {
        let offset = |server: &RedisServer, field: &str| {
            server.cli(&["INFO", "replication"]).and_then(|info| {
                info.lines().find_map(|l| l.strip_prefix(field)).and_then(|v| v.trim().parse::<u64>().ok())
            })
        };
        wait_for("the replica to catch up", Duration::from_secs(10), || {
            let master = offset(&self.master, "master_repl_offset:")?;
            (offset(&self.replica, "slave_repl_offset:")? == master).then_some(())
        });
    }

    /// Waits until a sentinel names `port` as the master.
    pub fn wait_master(&self, port: u16) {
        wait_for("the sentinels to name the new master", Duration::from_secs(30), || {
            let out = Command::new("redis-cli")
                .args(["-p", &self.sentinels[0].0.to_string(), "--raw"])
                .args(["SENTINEL", "GET-MASTER-ADDR-BY-NAME", SENTINEL_SERVICE])
                .output()
                .ok()?;
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .nth(1)
                .is_some_and(|p| p.trim() == port.to_string())
                .then_some(())
        });
    }
}

impl Drop for RedisSentinels {
    fn drop(&mut self) {
        for (_, child, _) in &mut self.sentinels {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What a logged-in client saw while Redis failed over: asked `GET /me` every 100 ms from
/// `failed` on until it was served again after at least one 503. Every answer must be 200 as
/// alice or a fast 503 (within 3 s): never a hang, a reset, a 500 or a logout. Returns how long
/// after `failed` it was served again, and how many 503s it got meanwhile.
pub fn ride_out_failover(client: &crate::Client, failed: std::time::Instant) -> (Duration, usize) {
    let mut unavailable = 0;
    loop {
        let asked = std::time::Instant::now();
        let res = client.get("/me").expect("an answer, not a hang or a reset");
        assert!(asked.elapsed() < Duration::from_secs(3), "a request during the failover took {:?}", asked.elapsed());
        match res.status {
            503 => unavailable += 1,
            200 => {
                assert_eq!(res.json()["user"], "alice", "still logged in: {}", res.body);
                if unavailable > 0 {
                    return (failed.elapsed(), unavailable);
                }
            }
            other => panic!("only 200 or a fast 503: {other} {}", res.body),
        }
        assert!(failed.elapsed() < Duration::from_secs(30), "not served again within 30 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}
