//! The demo in a real browser: Debian's headless Chromium driven over WebDriver (chromedriver).
//! Log in through the form, reload, watch the PID change while the session stays; log out;
//! in sticky mode every reload shows one PID.
//!
//! Without chromium and chromedriver the test is skipped with a loud message, unless
//! `HERD_REQUIRE_BROWSER` is set (CI sets it), in which case it fails.
//! `HERD_UPDATE_SCREENSHOT=1` also saves `docs/screenshot.png` for the README.

use std::{collections::HashSet, time::Duration};

use fantoccini::{Client, Locator};
use herd_e2e::{
    browser::{assert_reloads_cross_workers, log_in, reloads, text, Browser},
    Herd, RedisServer,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_logs_in_reloads_across_workers_and_logs_out() {
    let Some(browser) = Browser::start().await else { return };
    let c = &browser.client;
    let redis = RedisServer::start();
    let herd = Herd::start(&redis, &["--workers", "3"]);
    let base = format!("http://{}/", herd.addr);

    // A wrong password shows a readable message on the page, not JSON.
    log_in(c, &base, "not-the-password", "#notice").await;
    assert_eq!(text(c, "#notice").await, "Wrong user name or password.");

    log_in(c, &base, "wonderland", "#user").await;
    assert_eq!(text(c, "#user").await, "alice");
    assert_reloads_cross_workers(&reloads(c, 10).await);

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
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_sticky_mode_every_reload_shows_one_pid() {
    let Some(browser) = Browser::start().await else { return };
    let c = &browser.client;
    let redis = RedisServer::start();
    let herd = Herd::start(&redis, &["--workers", "3", "--sticky"]);
    let base = format!("http://{}/", herd.addr);
    log_in(c, &base, "wonderland", "#user").await;
    let seen = reloads(c, 10).await;
    let pids: HashSet<&String> = seen.iter().map(|r| &r.pid).collect();
    assert_eq!(pids.len(), 1, "sticky reloads reached several workers: {seen:?}");
    assert_eq!(text(c, "#balance").await, "ip-hash");
    browser.close().await;
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
    let Some(browser) = Browser::start().await else { return };
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
    browser.close().await;
}
