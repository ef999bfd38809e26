//! PROXY protocol headers (HAProxy's v1 text and v2 binary), written by hand as a balancer
//! sends them, for [`crate::Client::with_preamble`] and raw connections.

use std::net::{IpAddr, SocketAddr};

/// The v2 signature.
pub const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// `PROXY TCP4|TCP6 <client> <server> <client port> <server port>\r\n`.
pub fn v1(client: SocketAddr, server: SocketAddr) -> Vec<u8> {
    let family = if client.is_ipv4() { "TCP4" } else { "TCP6" };
    format!("PROXY {family} {} {} {} {}\r\n", client.ip(), server.ip(), client.port(), server.port()).into_bytes()
}

/// A v2 `PROXY` command over TCP for `client` → `server`. An IPv6 client with an IPv4 server
/// names the server IPv4-mapped, as a dual-stack balancer does (v2 has one family per header).
pub fn v2(client: SocketAddr, server: SocketAddr) -> Vec<u8> {
    let (family, mut addresses) = match (client.ip(), server.ip()) {
        (IpAddr::V4(c), IpAddr::V4(s)) => (0x11, [c.octets(), s.octets()].concat()),
        (IpAddr::V6(c), IpAddr::V6(s)) => (0x21, [c.octets(), s.octets()].concat()),
        (IpAddr::V6(c), IpAddr::V4(s)) => (0x21, [c.octets(), s.to_ipv6_mapped().octets()].concat()),
        (IpAddr::V4(c), IpAddr::V6(s)) => (0x21, [c.to_ipv6_mapped().octets(), s.octets()].concat()),
    };
    addresses.extend_from_slice(&client.port().to_be_bytes());
    addresses.extend_from_slice(&server.port().to_be_bytes());
    v2_raw(0x21, family, &addresses)
}

/// A v2 `LOCAL` command, as a balancer's health check sends: no client named.
pub fn v2_local() -> Vec<u8> {
    v2_raw(0x20, 0x00, &[])
}

/// A v2 header of any version/command byte, family/protocol byte and payload.
pub fn v2_raw(version_command: u8, family: u8, payload: &[u8]) -> Vec<u8> {
    let mut header = V2_SIGNATURE.to_vec();
    header.push(version_command);
    header.push(family);
    let len = u16::try_from(payload.len()).expect("a payload under 64 KiB");
    header.extend_from_slice(&len.to_be_bytes());
    header.extend_from_slice(payload);
    header
}
