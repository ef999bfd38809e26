//! The demo page: `GET /` for browsers. Server-rendered, no external assets, works without
//! JavaScript; the "hit it 20 times" chart is an optional enhancement.
//!
//! Everything interpolated goes through [`escape`]. Error messages come from a fixed list
//! selected by code ([`Notice`]), never from the query string itself.

use std::fmt::Write;

use herd_cluster::Balance;

/// A message shown above the session box, chosen by a short code in `/?error=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Notice {
    BadLogin,
    BadInput,
    RateLimited,
    Unavailable,
    /// Redis is full (507): retrying does not help.
    StoreFull,
    Busy,
}

impl Notice {
    pub(crate) fn from_code(code: &str) -> Option<Self> {
        match code {
            "bad-login" => Some(Notice::BadLogin),
            "bad-input" => Some(Notice::BadInput),
            "rate-limited" => Some(Notice::RateLimited),
            "unavailable" => Some(Notice::Unavailable),
            "store-full" => Some(Notice::StoreFull),
            "busy" => Some(Notice::Busy),
            _ => None,
        }
    }

    pub(crate) fn code(self) -> &'static str {
        match self {
            Notice::BadLogin => "bad-login",
            Notice::BadInput => "bad-input",
            Notice::RateLimited => "rate-limited",
            Notice::Unavailable => "unavailable",
            Notice::StoreFull => "store-full",
            Notice::Busy => "busy",
        }
    }

    fn text(self) -> &'static str {
        match self {
            Notice::BadLogin => "Wrong user name or password.",
            Notice::BadInput => "That form could not be read; please fill in both fields.",
            Notice::RateLimited => "Too many failed logins. Please wait a few minutes before trying again.",
            Notice::Unavailable => "The session store (Redis) is unavailable right now. Please retry in a moment.",
            Notice::Busy => "The server is busy right now. Please retry in a moment.",
            Notice::StoreFull => {
                "The session store (Redis) is full: logins and changes are refused until an operator frees memory."
            }
        }
    }

    /// The notice (and the status, for a page rendered in place) for a failed request; a full
    /// Redis is reported to the operator as it would be for a JSON answer.
    pub(crate) fn of(err: &crate::error::AppError) -> (axum::http::StatusCode, Self) {
        use crate::error::AppError;
        use axum::http::StatusCode;
        match err {
            AppError::BadCredentials => (StatusCode::UNAUTHORIZED, Notice::BadLogin),
            AppError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, Notice::RateLimited),
            AppError::BadRequest { status, .. } => (*status, Notice::BadInput),
            AppError::StoreFull(cause) => {
                herd_session_store::operator::redis_full(cause);
                (StatusCode::INSUFFICIENT_STORAGE, Notice::StoreFull)
            }
            AppError::Busy { .. } => (StatusCode::SERVICE_UNAVAILABLE, Notice::Busy),
            AppError::Unavailable(_) | AppError::Internal(_) => (StatusCode::SERVICE_UNAVAILABLE, Notice::Unavailable),
            AppError::CrossOrigin => (StatusCode::FORBIDDEN, Notice::BadInput),
        }
    }
}

/// What the page shows.
pub(crate) struct PageView<'a> {
    pub(crate) slot: usize,
    pub(crate) pid: u32,
    pub(crate) balance: Balance,
    pub(crate) uptime_s: u64,
    /// `(user, visits, session age in seconds)` when logged in.
    pub(crate) session: Option<(&'a str, u64, u64)>,
    pub(crate) demo_users: &'a [String],
    pub(crate) notice: Option<Notice>,
}

/// Escapes text for HTML element content and double-quoted attribute values.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn why_the_pid_changes(balance: Balance) -> &'static str {
    match balance {
        Balance::IpHash => {
            "Sticky mode: the primary picks the worker from your IP address, so every reload \
             lands on the same worker and the PID stays. Run without <code>--sticky</code> to \
             see it change."
        }
        Balance::Shared => {
            "Reload: this page is sent with <code>Connection: close</code>, so each reload opens \
             a new connection and the kernel hands it to whichever worker accepts first. The PID \
             changes, your session stays. Try <code>--sticky</code> \
             (<code>STICKY=1 docker compose up</code>) to pin yourself to one worker."
        }
        Balance::RoundRobin | Balance::LeastConn => {
            "Reload: this page is sent with <code>Connection: close</code>, so each reload opens \
             a new connection and the primary hands it to another worker. The PID changes, your \
             session stays. Try <code>--sticky</code> (<code>STICKY=1 docker compose up</code>) \
             to pin yourself to one worker."
        }
    }
}

fn ago(seconds: u64) -> String {
    match seconds {
        0..=59 => format!("{seconds} s"),
        60..=3599 => format!("{} min", seconds / 60),
        _ => format!("{} h {} min", seconds / 3600, seconds % 3600 / 60),
    }
}

pub(crate) fn render(view: &PageView<'_>) -> String {
    let mut session = String::new();
    match view.session {
        Some((user, visits, age)) => {
            // Writing to a String cannot fail.
            let _ = write!(
                session,
                r#"<p>Logged in as <b id="user">{user}</b> · <b id="visits">{visits}</b> visits · session started {age} ago</p>
<form method="post" action="/logout"><button type="submit">Log out</button></form>"#,
                user = escape(user),
                age = ago(age),
            );
        }
        None => {
            let hint = match view.demo_users.first() {
                Some(name) => format!(
                    r#"<p class="hint">Demo user: <b>{}</b> (its password was given with <code>--demo-user</code>)</p>"#,
                    escape(name)
                ),
                None => String::new(),
            };
            let _ = write!(
                session,
                r#"<p>Not logged in.</p>{hint}
<form method="post" action="/login" id="login">
<label>User <input name="username" autocomplete="username" required value="{value}"></label>
<label>Password <input name="password" type="password" autocomplete="current-password" required></label>
<button type="submit">Log in</button>
</form>"#,
                value = view.demo_users.first().map(|n| escape(n)).unwrap_or_default(),
            );
        }
    }
    let notice = view
        .notice
        .map(|n| format!(r#"<p class="notice" role="alert" id="notice">{}</p>"#, escape(n.text())))
        .unwrap_or_default();
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>herd · worker {slot}</title>
<style>
body {{ font: 16px/1.5 system-ui, sans-serif; margin: 0; background: #f6f7f9; color: #1d2330; }}
main {{ max-width: 40rem; margin: 2rem auto; padding: 0 1rem; }}
h1 {{ margin: 0 0 .25rem; font-size: 1.6rem; }}
.card {{ background: #fff; border: 1px solid #dde1e7; border-radius: 10px; padding: 1rem 1.25rem; margin: 1rem 0; }}
.who {{ font-size: 1.15rem; }}
.who b {{ color: #0b5cad; }}
.notice {{ background: #fdecea; border: 1px solid #f5c2bd; color: #8a1c12; border-radius: 8px; padding: .6rem .9rem; }}
.hint {{ color: #5b6473; font-size: .9rem; }}
label {{ display: block; margin: .4rem 0; }}
input {{ font: inherit; padding: .3rem .5rem; margin-left: .5rem; }}
button {{ font: inherit; padding: .35rem .9rem; border-radius: 6px; border: 1px solid #0b5cad; background: #0b5cad; color: #fff; cursor: pointer; }}
.bars div {{ display: flex; align-items: center; gap: .5rem; margin: .2rem 0; font-size: .9rem; }}
.bars span.bar {{ background: #0b5cad; height: 1rem; border-radius: 3px; }}
code {{ background: #eef0f3; padding: 0 .25rem; border-radius: 4px; }}
</style>
</head>
<body>
<main>
<h1>herd</h1>
<p class="who card">Served by <b id="worker">worker {slot}</b>, pid <b id="pid">{pid}</b> · balance <b id="balance">{balance}</b> · worker up {uptime}</p>
{notice}
<section class="card" id="session">
{session}
</section>
<section class="card">
<p>{why}</p>
<p><button type="button" id="hit" hidden>Hit it 20 times</button></p>
<div class="bars" id="chart"></div>
<noscript><p class="hint">With JavaScript on, a button here fires 20 requests and charts which workers answered.</p></noscript>
</section>
</main>
<script>
(() => {{
  const button = document.getElementById("hit");
  const chart = document.getElementById("chart");
  button.hidden = false;
  button.addEventListener("click", async () => {{
    button.disabled = true;
    const counts = new Map();
    for (let i = 0; i < 20; i++) {{
      try {{
        const r = await fetch("/whoami", {{ cache: "no-store" }});
        const who = await r.json();
        const key = `worker ${{who.worker}} · pid ${{who.pid}}`;
        counts.set(key, (counts.get(key) || 0) + 1);
      }} catch (e) {{
        counts.set("failed", (counts.get("failed") || 0) + 1);
      }}
    }}
    chart.replaceChildren(...[...counts.entries()].sort().map(([key, n]) => {{
      const row = document.createElement("div");
      const bar = document.createElement("span");
      bar.className = "bar";
      bar.style.width = `${{n * 1.2}}rem`;
      row.append(bar, `${{key}}: ${{n}}`);
      row.dataset.count = n;
      return row;
    }}));
    button.disabled = false;
  }});
}})();
</script>
</body>
</html>
"#,
        slot = view.slot,
        pid = view.pid,
        balance = view.balance.as_str(),
        uptime = ago(view.uptime_s),
        why = why_the_pid_changes(view.balance),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view<'a>(session: Option<(&'a str, u64, u64)>, demo: &'a [String]) -> PageView<'a> {
        PageView {
            slot: 2,
            pid: 4242,
            balance: Balance::RoundRobin,
            uptime_s: 75,
            session,
            demo_users: demo,
            notice: None,
        }
    }

    #[test]
    fn user_controlled_text_is_escaped() {
        let demo = vec![r#"<script>alert("x")</script>"#.to_owned()];
        let html = render(&view(Some((r#"<img src=x onerror="boom">"#, 3, 10)), &demo));
        assert!(!html.contains("<img src=x"), "user name not escaped");
        assert!(html.contains("&lt;img src=x onerror=&quot;boom&quot;&gt;"));
        let html = render(&view(None, &demo));
        assert!(!html.contains(r#"<script>alert("x")</script>"#), "demo user name not escaped");
    }

    #[test]
    fn shows_who_served_and_the_session() {
        let html = render(&view(Some(("alice", 3, 130)), &[]));
        assert!(html.contains(r#"<b id="pid">4242</b>"#) && html.contains("worker 2"));
        assert!(html.contains(r#"<b id="visits">3</b>"#) && html.contains("2 min ago"));
        assert!(html.contains(r#"action="/logout""#));
        let html = render(&view(None, &["alice".to_owned()]));
        assert!(html.contains(r#"action="/login""#) && html.contains("Demo user: <b>alice</b>"));
    }

    #[test]
    fn notices_come_from_a_fixed_list() {
        assert_eq!(Notice::from_code("bad-login"), Some(Notice::BadLogin));
        assert_eq!(Notice::from_code("<script>"), None);
        for notice in [Notice::BadLogin, Notice::BadInput, Notice::RateLimited, Notice::Unavailable, Notice::Busy] {
            assert_eq!(Notice::from_code(notice.code()), Some(notice));
        }
    }
}
