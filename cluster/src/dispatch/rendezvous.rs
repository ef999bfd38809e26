//! Sticky client → worker affinity by rendezvous (highest-random-weight) hashing.
//!
//! Every (client, slot) pair gets a pseudo-random score from a keyed hash; a client goes to the
//! live slot with the highest score. When a slot disappears only its own clients move (each to
//! its second-highest slot), and when it comes back exactly those clients return. Growing from
//! N to N+1 slots moves ≈ 1/(N+1) of clients — `hash % n` would move almost all of them.
//!
//! The key is random per cluster, so clients cannot choose addresses that pile onto one
//! worker. IPv6 clients are hashed by their /64, because one host commonly rotates through
//! addresses within its /64 (privacy extensions); IPv4-mapped IPv6 addresses count as IPv4.

use std::{
    hash::{DefaultHasher, Hash, Hasher},
    net::IpAddr,
};

pub(crate) struct Rendezvous {
    key: u64,
}

impl Rendezvous {
    /// Scores keyed by `key`, which the primary draws from the OS's randomness (the key is
    /// hashed ahead of every score, so without it scores cannot be predicted); a fixed key
    /// makes tests reproducible.
    pub(crate) fn with_key(key: u64) -> Self {
        Self { key }
    }

    /// The highest-scoring slot for `client`, or `None` without slots.
    pub(crate) fn pick(&self, client: IpAddr, slots: impl IntoIterator<Item = usize>) -> Option<usize> {
        let client = client_key(client);
        slots.into_iter().max_by_key(|&slot| (self.score(client, slot), slot))
    }

    /// The highest-scoring slot for one of kernel steering's address buckets
    /// (`crate::steering::program`), or `None` without slots.
    pub(crate) fn pick_bucket(&self, bucket: usize, slots: impl IntoIterator<Item = usize>) -> Option<usize> {
        let bucket = u128::try_from(bucket).unwrap_or(u128::MAX);
        slots.into_iter().max_by_key(|&slot| (self.score(bucket, slot), slot))
    }

    fn score(&self, client: u128, slot: usize) -> u64 {
        let mut hasher = DefaultHasher::new();
        self.key.hash(&mut hasher);
        client.hash(&mut hasher);
        slot.hash(&mut hasher);
        hasher.finish()
    }
}

/// What identifies a client: its [`crate::client_ip::group`] (the IPv4 address, or the /64 of
/// an IPv6 one) as a number. The top bit tells the families apart.
fn client_key(ip: IpAddr) -> u128 {
    match crate::client_ip::group(ip) {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => (u128::from(v6) >> (128 - crate::client_ip::IPV6_CLIENT_PREFIX)) | (1 << 127),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    /// A small deterministic generator, so the test needs no extra crate.
    fn random_ips(count: usize) -> Vec<IpAddr> {
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        (0..count)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                IpAddr::V4(Ipv4Addr::from(state as u32))
            })
            .collect()
    }

    fn moved_fraction(hrw: &Rendezvous, ips: &[IpAddr], before: usize, after: usize) -> f64 {
        let moved = ips.iter().filter(|&&ip| hrw.pick(ip, 0..before) != hrw.pick(ip, 0..after)).count();
        moved as f64 / ips.len() as f64
    }

    #[test]
    fn scaling_by_one_moves_about_one_nth_of_clients() {
        let hrw = Rendezvous::with_key(0x5EED);
        let ips = random_ips(100_000);
        let grow = moved_fraction(&hrw, &ips, 4, 5);
        let shrink = moved_fraction(&hrw, &ips, 5, 4);
        assert!(grow <= 1.0 / 5.0 + 0.01, "4→5 moved {grow:.4}");
        assert!(shrink <= 1.0 / 5.0 + 0.01, "5→4 moved {shrink:.4}");
        assert!(grow > 0.15 && shrink > 0.15, "the new/removed slot gets its share: {grow:.4} {shrink:.4}");
    }

    #[test]
    fn a_dead_slot_moves_only_its_own_clients_and_they_return() {
        let hrw = Rendezvous::with_key(0x5EED);
        for ip in random_ips(20_000) {
            let home = hrw.pick(ip, 0..4).expect("slots");
            let without_2 = hrw.pick(ip, [0, 1, 3]).expect("slots");
            if home == 2 {
                assert_ne!(without_2, 2);
            } else {
                assert_eq!(without_2, home, "{ip} moved although its slot lived");
            }
            assert_eq!(hrw.pick(ip, 0..4), Some(home), "{ip} returns home");
        }
    }

    #[test]
    fn clients_spread_evenly() {
        let hrw = Rendezvous::with_key(0x5EED);
        let mut counts = [0usize; 4];
        for ip in random_ips(100_000) {
            counts[hrw.pick(ip, 0..4).expect("slots")] += 1;
        }
        for count in counts {
            assert!((23_000..27_000).contains(&count), "uneven: {counts:?}");
        }
    }

    #[test]
    fn ipv6_hosts_in_one_slash_64_stick_together() {
        let hrw = Rendezvous::with_key(0x5EED);
        let a: Ipv6Addr = "2001:db8:1:2::1".parse().expect("literal");
        let b: Ipv6Addr = "2001:db8:1:2:ffff:ffff:ffff:ffff".parse().expect("literal");
        for slots in [2usize, 3, 4, 8, 16] {
            assert_eq!(hrw.pick(a.into(), 0..slots), hrw.pick(b.into(), 0..slots));
        }
        let mapped: Ipv6Addr = "::ffff:10.1.2.3".parse().expect("literal");
        assert_eq!(client_key(mapped.into()), client_key(Ipv4Addr::new(10, 1, 2, 3).into()));
    }
}
