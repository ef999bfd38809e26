//! Balancers in front of herd hosts, on loopback: Debian's HAProxy (HTTP mode naming the client
//! in `X-Forwarded-For`, or TCP mode naming it in a PROXY v2 header) and nginx's `stream`
//! module with `proxy_protocol on`. Each runs in the foreground with its own configuration,
//! pid file and log in a temporary directory, and is killed on drop.
//!
//! The configurations come from [`haproxy_config`] and [`nginx_stream_config`], which
//! docs/deploy.md shows rendered for production addresses (tests/tests/balancer.rs checks that
//! the document still says exactly that).

use std::{
    net::{SocketAddr, TcpStream},
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::{free_port, wait_for, TempDir};

/// How HAProxy hands a connection to herd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HaproxyMode {
    /// HAProxy speaks HTTP to herd and names the client in `X-Forwarded-For`.
    Http,
    /// HAProxy passes the bytes through and names the client in a PROXY v2 header (herd
    /// `--proxy-protocol`); its health checks send one too.
    TcpProxyV2,
}

/// HAProxy's configuration: round-robin over `backends`, each checked with `GET /readyz`
/// every 300 ms (out after 2 failures, back after 2 successes); a refused connection is retried
/// and, on the last try, sent to another backend.
pub fn haproxy_config(mode: HaproxyMode, bind: &str, backends: &[String]) -> String {
    let (mode, frontend, server) = match mode {
        HaproxyMode::Http => ("http", "  option forwardfor\n", ""),
        HaproxyMode::TcpProxyV2 => ("tcp", "", " send-proxy-v2 check-send-proxy"),
    };
    let servers: String =
        backends.iter().enumerate().map(|(i, backend)| format!("  server herd{i} {backend} check\n")).collect();
    format!(
        "global\n  maxconn 2000\n\
         defaults\n  mode {mode}\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\n  \
         retries 3\n  option redispatch\n\
         frontend web\n  bind {bind}\n{frontend}  default_backend herds\n\
         backend herds\n  balance roundrobin\n  option httpchk GET /readyz\n  http-check expect status 200\n  \
         default-server inter 300ms fall 2 rise 2{server}\n{servers}"
    )
}

/// The `stream { }` block of nginx's configuration: round-robin over `backends` with a PROXY
/// v1 header on each connection (nginx's `proxy_protocol` sends v1); a backend that refuses
/// twice is skipped for a second and the connection tried on the next.
pub fn nginx_stream_config(listen: &str, backends: &[String]) -> String {
    let servers: String =
        backends.iter().map(|backend| format!("    server {backend} max_fails=2 fail_timeout=1s;\n")).collect();
    format!(
        "stream {{\n  upstream herds {{\n{servers}  }}\n  server {{\n    listen {listen};\n    proxy_pass herds;\n    \
         proxy_protocol on;\n    proxy_connect_timeout 2s;\n    proxy_next_upstream on;\n  }}\n}}\n"
    )
}

/// A balancer process, killed on drop.
pub struct Balancer {
    child: Child,
    /// Where clients connect.
    pub addr: SocketAddr,
    dir: TempDir,
}

impl Balancer {
    /// `haproxy -db` on a free port of 127.0.0.1 with [`haproxy_config`].
    pub fn haproxy(mode: HaproxyMode, backends: &[SocketAddr]) -> Balancer {
        let dir = TempDir::new("haproxy");
        let addr = loopback_addr();
        let backends: Vec<String> = backends.iter().map(SocketAddr::to_string).collect();
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, haproxy_config(mode, &addr.to_string(), &backends)).expect("write haproxy.cfg");
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy must be installed (apt-get install haproxy)");
        Balancer::listening(child, addr, dir)
    }

    /// nginx in the foreground (`daemon off`) on a free port of 127.0.0.1 with
    /// [`nginx_stream_config`], its pid file and error log in its own directory.
    pub fn nginx_stream(backends: &[SocketAddr]) -> Balancer {
        let dir = TempDir::new("nginx");
        let addr = loopback_addr();
        let backends: Vec<String> = backends.iter().map(SocketAddr::to_string).collect();
        let config = format!(
            "load_module {NGINX_STREAM_MODULE};\nworker_processes 1;\npid {dir}/nginx.pid;\n\
             error_log {dir}/error.log;\nevents {{\n  worker_connections 512;\n}}\n{}",
            nginx_stream_config(&addr.to_string(), &backends),
            dir = dir.path().display(),
        );
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, config).expect("write nginx.conf");
        let child = Command::new("nginx")
            // The log nginx opens before it reads the configuration, and the prefix for
            // relative paths: both in the test's directory, not /var/log/nginx.
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&path)
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx must be installed (apt-get install nginx libnginx-mod-stream)");
        Balancer::listening(child, addr, dir)
    }

    fn listening(mut child: Child, addr: SocketAddr, dir: TempDir) -> Balancer {
        wait_for("the balancer to listen", Duration::from_secs(10), || {
            if let Ok(Some(exit)) = child.try_wait() {
                let log = std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default();
                panic!("the balancer exited ({exit}) before listening: {log}");
            }
            TcpStream::connect(addr).ok().map(drop)
        });
        Balancer { child, addr, dir }
    }

    /// nginx's error log (empty for HAProxy, which logs nowhere here).
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        // nginx's master does not take its workers with it when it is killed outright: ask it to
        // stop them (`SIGTERM`, a fast shutdown), and kill whatever is left after a deadline.
        let children = crate::herd::children(self.child.id());
        crate::signal(self.child.id(), nix::sys::signal::Signal::SIGTERM);
        let _ =
            crate::poll_every(Duration::from_millis(20), Duration::from_secs(5), || self.child.try_wait().transpose());
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in children {
            crate::signal(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// Debian's path of the dynamic `stream` module (package `libnginx-mod-stream`).
const NGINX_STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

fn loopback_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}
