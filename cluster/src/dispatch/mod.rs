//! Choosing a worker for each connection the primary accepts (the primary-accept modes).

pub(crate) mod rendezvous;

use std::net::{IpAddr, SocketAddr};

use crate::config::Balance;
use rendezvous::Rendezvous;

/// A connection accepted by the primary, held until a worker acknowledges it.
#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) id: u64,
    pub(crate) stream: std::net::TcpStream,
    pub(crate) peer: SocketAddr,
}

/// A worker that may receive connections.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Candidate {
    pub(crate) slot: usize,
    /// Connections handed to it and not yet reported closed.
    pub(crate) open: usize,
}

/// The policy of one primary-accept mode.
pub(crate) struct Chooser {
    balance: Balance,
    /// Round-robin position: the slot to try first next time.
    next: usize,
    sticky: Rendezvous,
}

impl Chooser {
    pub(crate) fn new(balance: Balance) -> Self {
        Self { balance, next: 0, sticky: Rendezvous::random() }
    }

    /// The slot to hand a connection from `client` to, among `candidates` (sorted by slot);
    /// `None` when there is none.
    pub(crate) fn choose(&mut self, client: IpAddr, candidates: &[Candidate]) -> Option<usize> {
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
        open.iter().enumerate().map(|(slot, &open)| Candidate { slot, open }).collect()
    }

    const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn round_robin_takes_turns_and_skips_missing_slots() {
        let mut chooser = Chooser::new(Balance::RoundRobin);
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
        let mut chooser = Chooser::new(Balance::LeastConn);
        assert_eq!(chooser.choose(CLIENT, &candidates(&[5, 1, 3])), Some(1));
        let picks: Vec<_> = (0..4).filter_map(|_| chooser.choose(CLIENT, &candidates(&[9, 2, 2, 2]))).collect();
        assert_eq!(picks, [2, 3, 1, 2]);
    }

    #[test]
    fn shared_mode_never_dispatches() {
        assert_eq!(Chooser::new(Balance::Shared).choose(CLIENT, &candidates(&[0])), None);
    }
}
