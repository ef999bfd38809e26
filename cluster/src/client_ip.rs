//! Who a client is, as far as affinity and limits are concerned: one IPv4 address, or one IPv6
//! /64. A single IPv6 host commonly rotates through addresses within its /64 (privacy
//! extensions) and is usually given a whole /64, so counting IPv6 addresses one by one would
//! let one machine look like 2^64 clients. IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`, what
//! a dual-stack socket reports for an IPv4 peer) count as the IPv4 address they carry.
//!
//! The sticky hash and the app's per-address login limit both group clients this way, so one
//! home decides it.

use std::net::{IpAddr, Ipv6Addr};

/// Bits of an IPv6 address that identify one client (its network prefix).
pub const IPV6_CLIENT_PREFIX: u32 = 64;

/// The address that stands for `ip`'s whole group: the IPv4 address itself (unmapped from
/// IPv6 if need be), or the IPv6 address with everything after its /64 set to zero.
pub fn group(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mask = u128::MAX << (128 - IPV6_CLIENT_PREFIX);
                IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
            }
        },
    }
}

/// [`group`] as text for keys and log lines: `203.0.113.7`, or `2001:db8:1:2::/64`.
pub fn group_label(ip: IpAddr) -> String {
    match group(ip) {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("{v6}/{IPV6_CLIENT_PREFIX}"),
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("literal address")
    }

    #[test]
    fn ipv6_addresses_in_one_slash_64_are_one_client() {
        assert_eq!(group(ip("2001:db8:1:2::1")), group(ip("2001:db8:1:2:ffff:ffff:ffff:ffff")));
        assert_eq!(group_label(ip("2001:db8:1:2:abcd::9")), "2001:db8:1:2::/64");
        assert_ne!(group(ip("2001:db8:1:2::1")), group(ip("2001:db8:1:3::1")), "the next /64 is another client");
        assert_eq!(group_label(ip("::1")), "::/64");
    }

    #[test]
    fn ipv4_is_per_address_and_mapped_ipv6_counts_as_ipv4() {
        assert_eq!(group(ip("::ffff:10.1.2.3")), IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)));
        assert_eq!(group_label(ip("::ffff:10.1.2.3")), "10.1.2.3");
        assert_ne!(group(ip("10.1.2.3")), group(ip("10.1.2.4")));
    }
}
