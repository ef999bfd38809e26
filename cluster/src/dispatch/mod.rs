//! Choosing a worker for each connection the primary accepts (the primary-accept modes).

pub(crate) mod rendezvous;

use std::{
    net::{IpAddr, SocketAddr},
    time::Instant,
};

use crate::config::Balance;
use rendezvous::Rendezvous;

/// A connection accepted by the primary, held until a worker acknowledges it.
#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) id: u64,
    pub(crate) stream: std::net::TcpStream,
    pub(crate) peer: SocketAddr,
    /// Who the client is: `peer`, or under `--proxy-protocol` the address its PROXY header
    /// named. What dispatch hashes and the worker sees.
    pub(crate) client: SocketAddr,
    /// When the primary accepted it: how long the client has been waiting for a worker.
    pub(crate) accepted_at: Instant,
}

/// A worker that may receive connections.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Candidate {
    pub(crate) slot: usize,
    /// Connections handed to it and not yet reported closed.
    pub(crate) open: usize,
    /// It missed heartbeats (or left a hand-off unacknowledged): it may be stopped or stuck,
    /// so it gets nothing until it proves it runs again.
    pub(crate) suspect: bool,
}

/// The policy of one primary-accept mode.
pub(crate) struct Chooser {
    balance: Balance,
    /// Round-robin position: the slot to try first next time.
    next: usize,
    sticky: Rendezvous,
}

impl Chooser {
    /// A chooser whose ip-hash key comes from `seed` (random in the primary; fixed in tests).
    pub(crate) fn new(balance: Balance, seed: u64) -> Self {
        Self { balance, next: 0, sticky: Rendezvous::with_key(seed) }
    }

    /// The slot to hand a connection from `client` to, among the candidates that are not
    /// suspect (`candidates` sorted by slot); `None` when there is none. In ip-hash mode the
    /// clients of a suspect slot go to their second choice meanwhile, and back home after.
    pub(crate) fn choose(&mut self, client: IpAddr, candidates: &[Candidate]) -> Option<usize> {
        let healthy: Vec<Candidate> = candidates.iter().copied().filter(|c| !c.suspect).collect();
        let candidates = healthy.as_slice();
        let slot = match self.balance {
            Balance::Shared => return None,
            Balance::IpHash => return self.sticky.pick(client, candidates.iter().map(|c| c.slot)),
            Balance::RoundRobin => self.in_turn(candidates).map(|c| c.slot)?,
            Balance::LeastConn => {
                let least = candidates.iter().map(|c| c.open).min()?;
                // Among the least loaded, take turns, so an idle cluster still spreads work.
                let tied: Vec<Candidate> = candidates.iter().copied().filter(|c| c.open == least).collect();
                self.in_turn(&tied).map(|c| c.slot)?
            }
        };
        self.next = slot + 1;
        Some(slot)
    }

    /// The first candidate at or after the round-robin position, wrapping around.
    fn in_turn<'a>(&self, candidates: &'a [Candidate]) -> Option<&'a Candidate> {
        candidates.iter().find(|c| c.slot >= self.next).or_else(|| candidates.first())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidates(open: &[usize]) -> Vec<Candidate> {
        open.iter().enumerate().map(|(slot, &open)| Candidate { slot, open, suspect: false }).collect()
    }

    const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn round_robin_takes_turns_and_skips_missing_slots() {
        let mut chooser = Chooser::new(Balance::RoundRobin, 1);
        let all = candidates(&[0, 0, 0]);
        let picks: Vec<_> = (0..6).filter_map(|_| chooser.choose(CLIENT, &all)).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        let without_1 = [all[0], all[2]];
        let picks: Vec<_> = (0..4).filter_map(|_| chooser.choose(CLIENT, &without_1)).collect();
        assert_eq!(picks, [0, 2, 0, 2]);
        assert_eq!(chooser.choose(CLIENT, &[]), None);
    }

    #[test]
    fn least_conn_prefers_the_least_loaded_and_rotates_ties() {
        let mut chooser = Chooser::new(Balance::LeastConn, 1);
        assert_eq!(chooser.choose(CLIENT, &candidates(&[5, 1, 3])), Some(1));
        let picks: Vec<_> = (0..4).filter_map(|_| chooser.choose(CLIENT, &candidates(&[9, 2, 2, 2]))).collect();
        assert_eq!(picks, [2, 3, 1, 2]);
    }

    #[test]
    fn a_suspect_worker_is_never_chosen_in_any_mode() {
        for balance in [Balance::RoundRobin, Balance::LeastConn, Balance::IpHash] {
            let mut chooser = Chooser::new(balance, 1);
            let mut all = candidates(&[0, 0, 0]);
            all[1].suspect = true;
            for n in 0..50u8 {
                let client = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, n));
                let pick = chooser.choose(client, &all);
                assert!(matches!(pick, Some(0 | 2)), "{balance:?} chose {pick:?}");
            }
            // Least-conn would otherwise prefer the idle suspect.
            let mut loaded = candidates(&[7, 0, 9]);
            loaded[1].suspect = true;
            assert_ne!(chooser.choose(CLIENT, &loaded), Some(1), "{balance:?}");
            let mut none = candidates(&[0]);
            none[0].suspect = true;
            assert_eq!(chooser.choose(CLIENT, &none), None, "{balance:?}");
        }
    }

    #[test]
    fn ip_hash_sends_a_suspects_clients_to_their_second_choice_and_back() {
        let mut chooser = Chooser::new(Balance::IpHash, 1);
        let all = candidates(&[0, 0, 0]);
        for n in 0..=255u8 {
            let client = IpAddr::V4(std::net::Ipv4Addr::new(10, 1, 0, n));
            let home = chooser.choose(client, &all).expect("a slot");
            let mut while_suspect = all.clone();
            while_suspect[home].suspect = true;
            let away = chooser.choose(client, &while_suspect).expect("a slot");
            assert_ne!(away, home);
            // Its second choice is the one it would get were the slot gone altogether.
            let without: Vec<Candidate> = all.iter().copied().filter(|c| c.slot != home).collect();
            assert_eq!(chooser.choose(client, &without), Some(away));
            // The clients of the other slots stay where they are.
            for other in 0..=255u8 {
                let bystander = IpAddr::V4(std::net::Ipv4Addr::new(10, 2, 0, other));
                let theirs = chooser.choose(bystander, &all).expect("a slot");
                if theirs != home {
                    assert_eq!(chooser.choose(bystander, &while_suspect), Some(theirs));
                }
            }
            assert_eq!(chooser.choose(client, &all), Some(home), "back home once it answers again");
        }
    }

    #[test]
    fn shared_mode_never_dispatches() {
        assert_eq!(Chooser::new(Balance::Shared, 1).choose(CLIENT, &candidates(&[0])), None);
    }
}
