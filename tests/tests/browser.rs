//! The demo in a real browser: Debian's headless Chromium driven over WebDriver (chromedriver).
//! Log in through the form, reload, watch the PID change while the session stays; log out;
//! in sticky mode every reload shows one PID.
//!
//! Without chromium and chromedriver the test is skipped with a loud message, unless
//! `HERD_REQUIRE_BROWSER` is set (CI sets it), in which case it fails.
//! `HERD_UPDATE_SCREENSHOT=1` also saves `docs/screenshot.png` for the README.

use std::{
    collections::HashSet,
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use fantoccini::{Client, ClientBuilder, Locator};
use herd_e2e::{wait_for, Herd, RedisServer, TempDir};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

struct Browser {
    client: Client,
    driver: Child,
    _profile: TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Starts chromedriver and a headless Chromium session, or explains why not.
async fn browser() -> Option<Browser> {
    if !Path::new(CHROMIUM).exists() || !Path::new(CHROMEDRIVER).exists() {
        let msg = "chromium and chromium-driver are not installed (apt-get install -y chromium chromium-driver)";
        if std::env::var_os("HERD_REQUIRE_BROWSER").is_some() {
            panic!("browser test required but {msg}");
        }
        eprintln!("\n*** SKIPPED the browser test: {msg} ***\n");
        return None;
    }
    let port = herd_e2e::free_port();
    let driver = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    wait_for("chromedriver to listen", Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
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
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let client = loop {
        let attempt = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await;
        match attempt {
            Ok(client) => break client,
            Err(err) if std::time::Instant::now() < deadline => {
                eprintln!("chromedriver not ready yet ({err}); retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(err) => panic!("cannot start a Chromium session: {err}"),
        }
    };
    Some(Browser { client, driver, _profile: profile })
}

async fn text(c: &Client, css: &str) -> String {
    c.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("no {css}: {e}")).text().await.expect("text")
}

/// Submits the login form and waits for the page it leads to (`expect`: an element there).
async fn log_in(c: &Client, base: &str, password: &str, expect: &str) {
    c.goto(base).await.expect("open the page");
    let form = c.form(Locator::Css("#login")).await.expect("the login form");
    form.set_by_name("username", "alice").await.expect("user field");
    form.set_by_name("password", password).await.expect("password field");
    c.find(Locator::Css("#login button")).await.expect("button").click().await.expect("submit");
    c.wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css(expect))
        .await
        .expect("the page after logging in");
}

/// Reloads `n` times; returns (pid, user, visits) as each page showed them.
async fn reloads(c: &Client, n: usize) -> Vec<(String, String, u64)> {
    let mut seen = Vec::new();
    for _ in 0..n {
        c.refresh().await.expect("reload");
        let visits = text(c, "#visits").await.parse().expect("visits is a number");
        seen.push((text(c, "#pid").await, text(c, "#user").await, visits));
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_logs_in_reloads_across_workers_and_logs_out() {
    let Some(browser) = browser().await else { return };
    let c = &browser.client;
    let redis = RedisServer::start();
    let herd = Herd::start(&redis, &["--workers", "3"]);
    let base = format!("http://{}/", herd.addr);

    // A wrong password shows a readable message on the page, not JSON.
    log_in(c, &base, "not-the-password", "#notice").await;
    assert_eq!(text(c, "#notice").await, "Wrong user name or password.");

    log_in(c, &base, "wonderland", "#user").await;
    assert_eq!(text(c, "#user").await, "alice");
    let seen = reloads(c, 10).await;
    let pids: HashSet<&String> = seen.iter().map(|(pid, _, _)| pid).collect();
    assert!(pids.len() >= 2, "10 reloads all showed one PID: {seen:?}");
    assert!(seen.iter().all(|(_, user, _)| user == "alice"), "{seen:?}");
    for pair in seen.windows(2) {
        assert_eq!(pair[1].2, pair[0].2 + 1, "visits must go up by one per reload: {seen:?}");
    }

    // The optional chart: 20 requests, more than one worker in round-robin.
    c.find(Locator::Css("#hit")).await.expect("button").click().await.expect("click");
    c.wait().at_most(Duration::from_secs(30)).for_element(Locator::Css("#chart div")).await.expect("chart rows");
    let counts: Vec<u64> = {
        let mut counts = Vec::new();
        for row in c.find_all(Locator::Css("#chart div")).await.expect("rows") {
            counts.push(row.attr("data-count").await.expect("attr").and_then(|n| n.parse().ok()).expect("count"));
        }
        counts
    };
    assert_eq!(counts.iter().sum::<u64>(), 20, "{counts:?}");
    assert!(counts.len() >= 2, "the chart shows one worker: {counts:?}");

    if std::env::var_os("HERD_UPDATE_SCREENSHOT").is_some() {
        let png = c.screenshot().await.expect("screenshot");
        std::fs::write(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/screenshot.png"), png).expect("save screenshot");
    }

    c.find(Locator::Css("#session form button")).await.expect("logout button").click().await.expect("log out");
    c.wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css("#login"))
        .await
        .expect("the login form is back");
    assert!(text(c, "#session").await.contains("Not logged in"));
    browser.client.clone().close().await.expect("close the browser");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_sticky_mode_every_reload_shows_one_pid() {
    let Some(browser) = browser().await else { return };
    let c = &browser.client;
    let redis = RedisServer::start();
    let herd = Herd::start(&redis, &["--workers", "3", "--sticky"]);
    let base = format!("http://{}/", herd.addr);
    log_in(c, &base, "wonderland", "#user").await;
    let seen = reloads(c, 10).await;
    let pids: HashSet<&String> = seen.iter().map(|(pid, _, _)| pid).collect();
    assert_eq!(pids.len(), 1, "sticky reloads reached several workers: {seen:?}");
    assert_eq!(text(c, "#balance").await, "ip-hash");
    browser.client.clone().close().await.expect("close the browser");
}

/// The rows of the admin dashboard's worker table: (slot, pid, state, restarts).
async fn dashboard_rows(c: &Client) -> Vec<(String, String, String, String)> {
    let mut rows = Vec::new();
    for row in c.find_all(Locator::Css("#workers tr[data-slot]")).await.unwrap_or_default() {
        let cells = row.find_all(Locator::Css("td")).await.unwrap_or_default();
        let mut texts = Vec::new();
        for cell in cells.iter().take(5) {
            texts.push(cell.text().await.unwrap_or_default());
        }
        if let [slot, pid, state, _uptime, restarts] = &texts[..] {
            rows.push((slot.clone(), pid.clone(), state.clone(), restarts.clone()));
        }
    }
    rows
}

/// Waits until the dashboard's rows satisfy `pred`; returns them.
async fn wait_rows(
    c: &Client,
    what: &str,
    pred: impl Fn(&[(String, String, String, String)]) -> bool,
) -> Vec<(String, String, String, String)> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let rows = dashboard_rows(c).await;
        if pred(&rows) {
            return rows;
        }
        assert!(std::time::Instant::now() < deadline, "the dashboard never showed {what}: {rows:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_a_restart_and_scales_up() {
    let Some(browser) = browser().await else { return };
    let c = &browser.client;
    let redis = RedisServer::start();
    let admin = format!("127.0.0.1:{}", herd_e2e::free_port());
    let herd =
        Herd::start_with_env(&redis, &["--workers", "2", "--metrics-bind", &admin], &[("HERD_METRICS_TOKEN", "tok")]);
    herd.wait_workers_ready(2, herd_e2e::herd::START_TIMEOUT);
    c.goto(&format!("http://{admin}/#token=tok")).await.expect("open the dashboard");
    let ready =
        |n: usize| move |rows: &[(String, String, String, String)]| rows.iter().filter(|r| r.2 == "ready").count() == n;
    let rows = wait_rows(c, "two ready workers", ready(2)).await;
    let victim_pid = rows.iter().find(|r| r.0 == "0").map(|r| r.1.clone()).expect("slot 0");

    // Killed from outside: the page shows the slot with a new pid and one restart.
    herd_e2e::signal(victim_pid.parse().expect("pid"), nix::sys::signal::Signal::SIGKILL);
    wait_rows(c, "slot 0 restarted", |rows| {
        rows.iter().any(|r| r.0 == "0" && r.2 == "ready" && r.1 != victim_pid && r.3 == "1")
    })
    .await;
    let events = text(c, "#events").await;
    assert!(events.contains("slot 0") && events.contains("restarted"), "{events}");

    c.find(Locator::Css("#scale-up")).await.expect("scale button").click().await.expect("click");
    wait_rows(c, "three ready workers", ready(3)).await;
    assert_eq!(herd_e2e::herd::workers(&herd.status()).len(), 3, "the primary scaled, not only the page");

    if std::env::var_os("HERD_UPDATE_SCREENSHOT").is_some() {
        // Some traffic, so that the chart and the req/s column have something to show.
        let client = herd.client();
        let load = std::thread::spawn(move || {
            let until = std::time::Instant::now() + Duration::from_secs(6);
            while std::time::Instant::now() < until {
                let _ = client.get("/whoami");
            }
        });
        tokio::time::sleep(Duration::from_secs(6)).await;
        let _ = load.join();
        let png = c.screenshot().await.expect("screenshot");
        std::fs::write(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/dashboard.png"), png).expect("save screenshot");
    }
    browser.client.clone().close().await.expect("close the browser");
}
