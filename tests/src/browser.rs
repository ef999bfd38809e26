//! Debian's headless Chromium driven over WebDriver (chromedriver), and the demo page's moves
//! (log in, reload, read what the page shows). Shared by the browser test, which runs herd from
//! the kit, and the compose test, which runs it in a container.
//!
//! Without chromium and chromedriver [`Browser::start`] returns `None` after a loud message,
//! unless `HERD_REQUIRE_BROWSER` is set (CI sets it), in which case it panics.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use fantoccini::{Client, ClientBuilder, Locator};

use crate::{wait_for, TempDir};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// How long chromedriver may take to listen, and then to serve a session.
const DRIVER_START: Duration = Duration::from_secs(30);
/// How long a page may take to show what a step waits for.
pub const PAGE_TIMEOUT: Duration = Duration::from_secs(20);

/// A Chromium session; chromedriver is killed by pid on drop.
pub struct Browser {
    pub client: Client,
    driver: Child,
    _profile: TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session, or explains why not.
    pub async fn start() -> Option<Browser> {
        if !Path::new(CHROMIUM).exists() || !Path::new(CHROMEDRIVER).exists() {
            let msg = "chromium and chromium-driver are not installed (apt-get install -y chromium chromium-driver)";
            if std::env::var_os("HERD_REQUIRE_BROWSER").is_some() {
                panic!("browser test required but {msg}");
            }
            eprintln!("\n*** SKIPPED the browser test: {msg} ***\n");
            return None;
        }
        let port = crate::free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        wait_for("chromedriver to listen", DRIVER_START, || std::net::TcpStream::connect(("127.0.0.1", port)).ok());
        let profile = TempDir::new("chromium");
        // Flags as the machine notes recommend: no sandbox as root, and no background networking
        // (this machine's closed network would otherwise refuse Chromium's connections by the dozen).
        let args = vec![
            "--headless=new".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--window-size=900,1000".to_owned(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let mut caps = serde_json::Map::new();
        caps.insert("goog:chromeOptions".to_owned(), serde_json::json!({ "binary": CHROMIUM, "args": args }));
        // chromedriver accepts connections a moment before it serves sessions: retry until a
        // deadline rather than guess a delay.
        let deadline = Instant::now() + DRIVER_START;
        let client = loop {
            let attempt = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                .capabilities(caps.clone())
                .connect(&format!("http://127.0.0.1:{port}"))
                .await;
            match attempt {
                Ok(client) => break client,
                Err(err) if Instant::now() < deadline => {
                    eprintln!("chromedriver not ready yet ({err}); retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(err) => panic!("cannot start a Chromium session: {err}"),
            }
        };
        Some(Browser { client, driver, _profile: profile })
    }

    /// Ends the WebDriver session (the browser closes; chromedriver goes on drop).
    pub async fn close(self) {
        self.client.clone().close().await.expect("close the browser");
    }
}

/// The text of the element `css`, which must exist.
pub async fn text(c: &Client, css: &str) -> String {
    c.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("no {css}: {e}")).text().await.expect("text")
}

/// Submits the login form as alice and waits for the page it leads to (`expect`: an element there).
pub async fn log_in(c: &Client, base: &str, password: &str, expect: &str) {
    c.goto(base).await.expect("open the page");
    let form = c.form(Locator::Css("#login")).await.expect("the login form");
    form.set_by_name("username", "alice").await.expect("user field");
    form.set_by_name("password", password).await.expect("password field");
    c.find(Locator::Css("#login button")).await.expect("button").click().await.expect("submit");
    c.wait().at_most(PAGE_TIMEOUT).for_element(Locator::Css(expect)).await.expect("the page after logging in");
}

/// One reload as the page showed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reload {
    pub pid: String,
    pub user: String,
    pub visits: u64,
}

/// Reloads `n` times; returns what each page showed.
pub async fn reloads(c: &Client, n: usize) -> Vec<Reload> {
    let mut seen = Vec::new();
    for _ in 0..n {
        c.refresh().await.expect("reload");
        let visits = text(c, "#visits").await.parse().expect("visits is a number");
        seen.push(Reload { pid: text(c, "#pid").await, user: text(c, "#user").await, visits });
    }
    seen
}

/// The check both deployments share: logged in as alice, the visits go up by one per reload,
/// and fresh connections reach at least two workers.
pub fn assert_reloads_cross_workers(seen: &[Reload]) {
    let pids: std::collections::HashSet<&String> = seen.iter().map(|r| &r.pid).collect();
    assert!(pids.len() >= 2, "{} reloads all showed one PID: {seen:?}", seen.len());
    assert!(seen.iter().all(|r| r.user == "alice"), "{seen:?}");
    for pair in seen.windows(2) {
        assert_eq!(pair[1].visits, pair[0].visits + 1, "visits must go up by one per reload: {seen:?}");
    }
}
