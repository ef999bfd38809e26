//! The real client behind trusted proxies: `X-Forwarded-For` and `Forwarded` (RFC 7239), honoured
//! only on connections from an address in [`TrustedProxies`].
//!
//! Behind a balancer every connection comes from the balancer, so the peer address says
//! nothing about the client; the balancer names the client in a header. But any client can
//! send that header too, so it is believed only from the proxies the operator lists, and then
//! only as far as the chain stays inside them: reading the hops from the right (the nearest
//! first), the client is the first hop that is not a trusted proxy. A client that sends its own
//! `X-Forwarded-For: 1.2.3.4` through the balancer gets `1.2.3.4, <its address>`, and is seen as
//! `<its address>`. With no trusted proxy (the default) the headers are ignored altogether.
//!
//! The resolved address replaces `ConnectInfo<SocketAddr>` before the application sees the
//! request ([`resolve`]), so its rate limits, logs and pages all use the client; the proxy's
//! own address stays available as [`Forwarder`].

use std::{
    net::{IpAddr, SocketAddr},
    str::FromStr,
    sync::Arc,
};

use axum::{
    extract::{ConnectInfo, Request, State},
    http::{header, HeaderMap},
    middleware::Next,
    response::Response,
};
use ipnet::IpNet;

/// Addresses whose forwarding headers are believed (`--trusted-proxies`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

/// A `--trusted-proxies` entry that is neither an address nor a CIDR block.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an IP address or a CIDR block (such as 10.0.0.0/8 or fd00::/8)")]
pub struct BadProxy(String);

impl FromStr for TrustedProxies {
    type Err = BadProxy;

    /// A comma-separated list of addresses and CIDR blocks; empty trusts nothing.
    fn from_str(list: &str) -> Result<Self, BadProxy> {
        let parse = |entry: &str| {
            entry
                .parse::<IpNet>()
                .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| BadProxy(entry.to_owned()))
        };
        list.split(',').map(str::trim).filter(|e| !e.is_empty()).map(parse).collect::<Result<_, _>>().map(Self)
    }
}

impl TrustedProxies {
    /// True when no proxy is trusted: the headers are never read.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Is `ip` one of them? An IPv4 address written as IPv6 (`::ffff:10.0.0.1`, as a dual-stack
    /// socket reports it) counts as the IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client of a request that arrived from `peer` with `headers`: `peer` itself unless it
    /// is a trusted proxy, else the rightmost hop of `Forwarded` (or, without it,
    /// `X-Forwarded-For`) that is not a trusted proxy. A hop that cannot be read (`unknown`, an
    /// obfuscated name, garbage) ends the walk at the proxy that passed it on.
    pub fn client(&self, peer: SocketAddr, headers: &HeaderMap) -> SocketAddr {
        if !self.contains(peer.ip()) {
            return peer;
        }
        let hops = forwarded_hops(headers).or_else(|| x_forwarded_for_hops(headers)).unwrap_or_default();
        let mut client = peer;
        for hop in hops.iter().rev() {
            if !self.contains(client.ip()) {
                break;
            }
            match parse_hop(hop) {
                Some(hop) => client = hop,
                None => break,
            }
        }
        client
    }
}

/// The proxy a request came through, when [`resolve`] replaced its `ConnectInfo` with the
/// client it named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forwarder(pub SocketAddr);

/// Middleware: replaces `ConnectInfo<SocketAddr>` by the client [`TrustedProxies::client`] finds.
pub(crate) async fn resolve(State(trusted): State<Arc<TrustedProxies>>, mut request: Request, next: Next) -> Response {
    if let Some(&ConnectInfo(peer)) = request.extensions().get::<ConnectInfo<SocketAddr>>() {
        let client = trusted.client(peer, request.headers());
        if client != peer {
            request.extensions_mut().insert(ConnectInfo(client));
            request.extensions_mut().insert(Forwarder(peer));
        }
    }
    next.run(request).await
}

/// The `for=` values of every `Forwarded` header, in order; `None` without the header.
fn forwarded_hops(headers: &HeaderMap) -> Option<Vec<String>> {
    let mut values = headers.get_all(header::FORWARDED).iter().peekable();
    values.peek()?;
    let mut hops = Vec::new();
    for value in values {
        // A header that is not text is as unreadable as a bad hop: the walk stops there.
        let Ok(text) = value.to_str() else {
            hops.push(String::new());
            continue;
        };
        for element in text.split(',') {
            let hop = element.split(';').find_map(|pair| {
                let (key, value) = pair.split_once('=')?;
                key.trim().eq_ignore_ascii_case("for").then(|| value.trim().trim_matches('"').to_owned())
            });
            // An element without `for=` still counts as a hop the walk cannot read.
            hops.push(hop.unwrap_or_default());
        }
    }
    Some(hops)
}

/// The entries of every `X-Forwarded-For` header, in order; `None` without the header.
fn x_forwarded_for_hops(headers: &HeaderMap) -> Option<Vec<String>> {
    let mut values = headers.get_all("x-forwarded-for").iter().peekable();
    values.peek()?;
    Some(
        values
            .flat_map(|value| {
                let text = value.to_str().unwrap_or_default();
                text.split(',').map(|hop| hop.trim().to_owned()).collect::<Vec<_>>()
            })
            .collect(),
    )
}

/// `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`, `[2001:db8::1]` or `[2001:db8::1]:4711`; the
/// port is 0 when the hop has none.
fn parse_hop(hop: &str) -> Option<SocketAddr> {
    if let Ok(addr) = hop.parse::<SocketAddr>() {
        return Some(SocketAddr::new(addr.ip().to_canonical(), addr.port()));
    }
    let ip = hop.strip_prefix('[').and_then(|rest| rest.strip_suffix(']')).unwrap_or(hop);
    ip.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip.to_canonical(), 0))
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).expect("a header value"));
        }
        map
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("an address")
    }

    fn trusted(list: &str) -> TrustedProxies {
        list.parse().expect("a list")
    }

    #[test]
    fn lists_parse_and_bad_entries_are_named() {
        let list = trusted(" 10.0.0.0/8, 192.0.2.7 ,fd00::/8,,");
        assert!(list.contains("10.1.2.3".parse().expect("ip")));
        assert!(list.contains("192.0.2.7".parse().expect("ip")));
        assert!(!list.contains("192.0.2.8".parse().expect("ip")));
        assert!(list.contains("fd00::1".parse().expect("ip")));
        assert!(list.contains("::ffff:10.0.0.1".parse().expect("ip")), "IPv4 seen through a dual-stack socket");
        assert!(trusted("").is_empty());
        assert_eq!("10.0.0.0/8,balancer".parse::<TrustedProxies>(), Err(BadProxy("balancer".to_owned())));
        assert!("10.0.0.0/33".parse::<TrustedProxies>().is_err());
    }

    #[test]
    fn nothing_trusted_means_the_headers_are_ignored() {
        let peer = addr("203.0.113.9:5000");
        let spoofed = headers(&[("x-forwarded-for", "1.2.3.4"), ("forwarded", "for=1.2.3.4")]);
        assert_eq!(TrustedProxies::default().client(peer, &spoofed), peer);
        assert_eq!(trusted("10.0.0.0/8").client(peer, &spoofed), peer, "the peer is not a trusted proxy");
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        let proxies = trusted("10.0.0.0/8");
        let balancer = addr("10.0.0.2:40000");
        let chain = headers(&[("x-forwarded-for", "1.2.3.4, 198.51.100.7, 10.0.0.5")]);
        assert_eq!(proxies.client(balancer, &chain), addr("198.51.100.7:0"), "1.2.3.4 is the client's own claim");
        let split = headers(&[("x-forwarded-for", "1.2.3.4"), ("x-forwarded-for", "198.51.100.7")]);
        assert_eq!(proxies.client(balancer, &split), addr("198.51.100.7:0"), "header lines are one list");
        let all_trusted = headers(&[("x-forwarded-for", "10.9.9.9, 10.0.0.5")]);
        assert_eq!(proxies.client(balancer, &all_trusted), addr("10.9.9.9:0"), "the leftmost when all are trusted");
        assert_eq!(proxies.client(balancer, &HeaderMap::new()), balancer, "no header: the peer");
    }

    #[test]
    fn forwarded_wins_and_is_read_with_ports_quotes_and_ipv6() {
        let proxies = trusted("10.0.0.0/8");
        let balancer = addr("10.0.0.2:40000");
        let both = headers(&[
            ("x-forwarded-for", "192.0.2.99"),
            ("forwarded", r#"for=192.0.2.60:47011;proto=http, For="[2001:db8:cafe::17]:4711";by=10.0.0.2"#),
        ]);
        assert_eq!(proxies.client(balancer, &both), addr("[2001:db8:cafe::17]:4711"));
        let v6 = headers(&[("forwarded", r#"for="[2001:db8::1]""#)]);
        assert_eq!(proxies.client(balancer, &v6), addr("[2001:db8::1]:0"));
    }

    #[test]
    fn an_unreadable_hop_stops_at_the_proxy_that_passed_it() {
        let proxies = trusted("10.0.0.0/8");
        let balancer = addr("10.0.0.2:40000");
        for value in ["1.2.3.4, garbage", "1.2.3.4, unknown", "1.2.3.4, "] {
            assert_eq!(proxies.client(balancer, &headers(&[("x-forwarded-for", value)])), balancer, "{value:?}");
        }
        let hidden = headers(&[("forwarded", "for=1.2.3.4, for=_hidden")]);
        assert_eq!(proxies.client(balancer, &hidden), balancer);
        let no_for = headers(&[("forwarded", "for=1.2.3.4, proto=https")]);
        assert_eq!(proxies.client(balancer, &no_for), balancer);
    }
}
