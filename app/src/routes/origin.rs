//! Cross-site request forgery, login CSRF included: a page on another site can make the
//! browser send a form `POST` to herd (`SameSite=Lax` keeps the session cookie off it, but a
//! login needs no cookie: the attacker's form logs the victim's browser in as the attacker).
//!
//! [`check`] refuses, with 403 and a JSON error, every request with a state-changing method
//! (anything but `GET`, `HEAD`, `OPTIONS`, `TRACE`) that a browser marks as coming from
//! elsewhere:
//!
//! - an `Origin` header that is neither herd's own origin (the `Host` header, with the scheme
//!   from `X-Forwarded-Proto` behind a TLS proxy, else `http`) nor one of `--allowed-origins`
//!   (`Origin: null`, sent from sandboxed frames and some redirects, is never allowed);
//! - without `Origin`, `Sec-Fetch-Site: cross-site`.
//!
//! Requests with neither header (curl, scripts, tests, old browsers on same-origin forms) pass:
//! every current browser sends `Origin` on a cross-origin `POST`, and a client that sends no
//! such header is not a browser riding on a victim's cookies. Trusting `X-Forwarded-Proto` is
//! safe here for the same reason: a page cannot set it on a cross-site form post.

use std::sync::Arc;

use axum::{
    extract::{Request, State},
    http::{header, HeaderMap, Method, Uri},
    middleware::Next,
    response::{IntoResponse, Response},
};

use crate::error::AppError;

/// Origins whose pages may change state, besides herd's own.
#[derive(Debug, Clone, Default)]
pub(crate) struct OriginPolicy {
    /// Normalised by [`parse_origin`].
    allowed: Arc<[String]>,
}

impl OriginPolicy {
    /// `allowed`: origins as [`parse_origin`] returns them.
    pub(crate) fn new(allowed: Vec<String>) -> Self {
        Self { allowed: allowed.into() }
    }

    /// True when a request with these headers may change state.
    fn allows(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> bool {
        if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE) {
            return true;
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let Some(origin) = origin.to_str().ok().and_then(|o| parse_origin(o).ok()) else {
                return false;
            };
            return own_origin(uri, headers).is_some_and(|own| own == origin) || self.allowed.contains(&origin);
        }
        let fetch_site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
        !fetch_site.is_some_and(|site| site.eq_ignore_ascii_case("cross-site"))
    }
}

/// The middleware: see the module documentation.
pub(super) async fn check(State(policy): State<OriginPolicy>, request: Request, next: Next) -> Response {
    if policy.allows(request.method(), request.uri(), request.headers()) {
        return next.run(request).await;
    }
    tracing::debug!(method = %request.method(), path = request.uri().path(), "cross-origin request refused");
    AppError::CrossOrigin.into_response()
}

/// The origin this request was addressed to: its `Host` (or, in HTTP/2, its URI's authority)
/// with the scheme the client used.
fn own_origin(uri: &Uri, headers: &HeaderMap) -> Option<String> {
    let host =
        headers.get(header::HOST).and_then(|v| v.to_str().ok()).or_else(|| uri.authority().map(|a| a.as_str()))?;
    let scheme = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(str::trim)
        .filter(|proto| proto.eq_ignore_ascii_case("https"))
        .map_or("http", |_| "https");
    parse_origin(&format!("{scheme}://{host}")).ok()
}

/// `scheme://host[:port]` with an `http` or `https` scheme, lowercased and without its
/// scheme's default port, so that equal origins compare equal as text. (Also the value parser
/// of `--allowed-origins`.)
pub(crate) fn parse_origin(text: &str) -> Result<String, String> {
    let bad = || format!("{text:?} is not an origin like https://example.com or http://localhost:3000");
    let uri: Uri = text.parse().map_err(|_| bad())?;
    let scheme = uri.scheme_str().map(str::to_ascii_lowercase).ok_or_else(bad)?;
    let authority = uri.authority().ok_or_else(bad)?;
    let default_port = match scheme.as_str() {
        "http" => 80,
        "https" => 443,
        _ => return Err(bad()),
    };
    let path = uri.path_and_query().map_or("", |p| p.as_str());
    if !(path.is_empty() || path == "/") || authority.as_str().contains('@') {
        return Err(bad());
    }
    let host = authority.host().to_ascii_lowercase();
    Ok(match authority.port_u16() {
        Some(port) if port != default_port => format!("{scheme}://{host}:{port}"),
        _ => format!("{scheme}://{host}"),
    })
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn allows(policy: &OriginPolicy, method: Method, headers: &[(&'static str, &'static str)]) -> bool {
        let mut map = HeaderMap::new();
        map.insert(header::HOST, HeaderValue::from_static("herd.test:3000"));
        for (name, value) in headers {
            map.insert(*name, HeaderValue::from_static(value));
        }
        policy.allows(&method, &Uri::from_static("/login"), &map)
    }

    #[test]
    fn origins_are_normalised() {
        assert_eq!(parse_origin("HTTPS://Example.COM:443"), Ok("https://example.com".to_owned()));
        assert_eq!(parse_origin("http://localhost:3000/"), Ok("http://localhost:3000".to_owned()));
        assert_eq!(parse_origin("http://[::1]:80"), Ok("http://[::1]".to_owned()));
        for bad in ["null", "example.com", "ftp://example.com", "https://example.com/path", "https://u@example.com", ""]
        {
            assert!(parse_origin(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn foreign_origins_are_refused_on_state_changes_only() {
        let policy = OriginPolicy::default();
        assert!(!allows(&policy, Method::POST, &[("origin", "https://evil.example")]));
        assert!(!allows(&policy, Method::DELETE, &[("origin", "null")]));
        assert!(
            !allows(&policy, Method::POST, &[("origin", "https://herd.test:3000")]),
            "another scheme is another origin"
        );
        assert!(allows(&policy, Method::GET, &[("origin", "https://evil.example")]));
        assert!(allows(&policy, Method::POST, &[("origin", "http://herd.test:3000")]));
        assert!(allows(&policy, Method::POST, &[("origin", "https://herd.test:3000"), ("x-forwarded-proto", "https")]));
    }

    #[test]
    fn fetch_metadata_counts_without_an_origin() {
        let policy = OriginPolicy::default();
        assert!(!allows(&policy, Method::POST, &[("sec-fetch-site", "cross-site")]));
        assert!(allows(&policy, Method::POST, &[("sec-fetch-site", "same-origin")]));
        assert!(allows(&policy, Method::POST, &[]), "curl and scripts send neither header");
    }

    #[test]
    fn configured_origins_are_allowed() {
        let policy = OriginPolicy::new(vec![parse_origin("https://app.example").expect("valid")]);
        assert!(allows(&policy, Method::POST, &[("origin", "https://app.example"), ("sec-fetch-site", "cross-site")]));
        assert!(!allows(&policy, Method::POST, &[("origin", "https://evil.example")]));
    }
}
