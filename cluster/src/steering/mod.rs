//! Kernel steering (`--steering kernel`): the kernel, not the primary, puts each new connection
//! on a worker, so the primary does no work per connection.
//!
//! The primary opens one listener per slot on the port, all in one `SO_REUSEPORT` group with its
//! own listener, and keeps every one of them open for its whole life. Each worker accepts on its
//! slot's listener (which its replacements inherit, so connections queued while a worker
//! restarts wait for it instead of being reset, unlike plain reuseport where the queue dies with
//! its process). A classic-BPF program attached to the group ([`program`]) picks the listener
//! for each connection: at random among the ready slots (`round-robin`), or by the client
//! address's bucket (`ip-hash`). The supervisor core says which slots are ready
//! ([`crate::supervisor::Effect::Steer`]); the program is rebuilt whenever that set changes.
//!
//! What the program does not send to a ready slot still reaches one: with no ready slot it
//! returns the primary's own listener, and the primary also accepts on the listener of every
//! slot that is not ready (dead, restarting, removed by scaling) and hands what it finds there
//! over `SCM_RIGHTS`, as without steering. So a connection that raced a change of the program
//! is served, never stranded.
//!
//! Where the kernel cannot see what the policy needs, the primary steers: `least-conn` (the
//! kernel knows no worker's load) and `ip-hash` under `--proxy-protocol` (the client is in the
//! header, after the handshake). So does it when the group cannot be made, e.g. a listener from
//! socket activation created by another user.

mod kernel;
pub(crate) mod program;

use std::{io, net::TcpListener};

use crate::config::Balance;

/// How the program picks among ready slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Policy {
    Spread,
    Sticky { key: u64 },
}

/// The slots' listeners and the program that chooses among them.
pub(crate) struct Steering {
    policy: Policy,
    /// The primary's listener, head of the group (index 0).
    main: TcpListener,
    /// Slot `i`'s listener at `i` (index `i + 1` in the group).
    slots: Vec<TcpListener>,
}

impl Steering {
    /// Makes `main` the head of a group and opens a listener for each of the first `workers`
    /// slots; `inherited` are the slot listeners of an old primary in a hand-over (the group
    /// exists already, in this order). Everything goes to `main` until [`Steering::steer`].
    pub(crate) fn new(
        main: &TcpListener,
        balance: Balance,
        key: u64,
        workers: usize,
        inherited: Vec<TcpListener>,
    ) -> io::Result<Self> {
        let policy = if balance == Balance::IpHash { Policy::Sticky { key } } else { Policy::Spread };
        kernel::allow_group(main)?;
        let mut steering = Self { policy, main: main.try_clone()?, slots: inherited };
        if workers > 0 {
            steering.listener(workers - 1)?;
        }
        steering.steer(&[])?;
        Ok(steering)
    }

    /// Slot `slot`'s listener, opened (with those of the slots before it) on first use.
    pub(crate) fn listener(&mut self, slot: usize) -> io::Result<&TcpListener> {
        while self.slots.len() <= slot {
            self.slots.push(kernel::join_group(&self.main)?);
        }
        Ok(&self.slots[slot])
    }

    /// Every slot's listener, in slot order (for a new primary in a hand-over).
    pub(crate) fn listeners(&self) -> &[TcpListener] {
        &self.slots
    }

    /// Sends new connections to the listeners of `ready` (slots, sorted), or to the primary's
    /// own when it is empty.
    pub(crate) fn steer(&self, ready: &[usize]) -> io::Result<()> {
        let ready: Vec<usize> = ready.iter().copied().filter(|&slot| slot < self.slots.len()).collect();
        let program = match self.policy {
            Policy::Spread => program::spread(&ready),
            Policy::Sticky { key } => program::sticky(&ready, key),
        };
        kernel::attach(&self.main, &program)
    }
}
