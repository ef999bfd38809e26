//! The classic-BPF programs that choose a slot's listener for each new connection, with no I/O:
//! [`spread`] and [`sticky`] return instructions, which `super::kernel` attaches to the
//! listeners' `SO_REUSEPORT` group. The kernel runs the program on each connection's first
//! packet (the SYN) and queues the connection on the listener at the index it returns.
//!
//! Index 0 is the primary's own listener, index `slot + 1` is slot `slot`'s (the order the
//! primary created them in; it never closes one while it runs, and closing is the only thing
//! that reorders a group). Returning 0 therefore means "the primary accepts this one and hands
//! it over", exactly as without steering: with no ready slot the program is a lone `ret #0`.
//!
//! The sticky program hashes the client's address (IPv4, or the /64 of IPv6, as
//! `crate::dispatch::rendezvous` does) into one of [`BUCKETS`] buckets and maps each bucket to a
//! slot by rendezvous hashing over the ready slots, so that adding or removing a slot moves only
//! the buckets that slot wins or loses: about 1/N of the clients. The bucket → slot table is
//! compiled into a binary search over runs of buckets (classic BPF has no maps), at most
//! `3 × BUCKETS` instructions, within the kernel's limit of 4096.

use crate::dispatch::rendezvous::Rendezvous;

/// One classic-BPF instruction (`struct sock_filter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Insn {
    pub(crate) code: u16,
    pub(crate) jt: u8,
    pub(crate) jf: u8,
    pub(crate) k: u32,
}

// The opcodes used here (linux/filter.h, linux/bpf_common.h).
const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const ALU_K: u16 = 0x04;
const ALU_X: u16 = 0x04 | 0x08;
const ALU_XOR: u16 = 0xa0;
const ALU_MUL: u16 = 0x20;
const ALU_RSH: u16 = 0x70;
const ALU_MOD: u16 = 0x90;
const JMP_JA: u16 = 0x05;
const JMP_JEQ_K: u16 = 0x05 | 0x10;
const JMP_JGE_K: u16 = 0x05 | 0x30;
const RET_K: u16 = 0x06;
const MISC_TAX: u16 = 0x07;

/// Ancillary loads: `skb->protocol` and a random number (`SKF_AD_OFF + SKF_AD_*`).
const AD_PROTOCOL: u32 = (-0x1000i32) as u32;
const AD_RANDOM: u32 = (-0x1000i32 + 56) as u32;
/// Loads relative to the network (IP) header (`SKF_NET_OFF`).
const NET: i32 = -0x10_0000;
const ETH_P_IPV6: u32 = 0x86dd;

/// The kernel's limit on a classic program's length (`BPF_MAXINSNS`).
pub(crate) const MAX_INSNS: usize = 4096;
/// Sticky buckets: enough that each of many slots gets a fair share, few enough that the search
/// tree stays within [`MAX_INSNS`].
const BUCKET_BITS: u32 = 10;
const BUCKETS: usize = 1 << BUCKET_BITS;

const M1: u32 = 0x9e37_79b1;
const M2: u32 = 0x85eb_ca6b;

fn stmt(code: u16, k: u32) -> Insn {
    Insn { code, jt: 0, jf: 0, k }
}

fn net(offset: i32) -> u32 {
    (NET + offset) as u32
}

/// The group index of a slot's listener.
fn index_of(slot: usize) -> u32 {
    u32::try_from(slot + 1).unwrap_or(0)
}

/// Every connection to a ready slot, picked at random (as even as round-robin, with no state:
/// classic BPF keeps none between packets); with none ready, to the primary.
pub(crate) fn spread(ready: &[usize]) -> Vec<Insn> {
    if ready.is_empty() {
        return vec![stmt(RET_K, 0)];
    }
    let count = u32::try_from(ready.len()).unwrap_or(u32::MAX);
    let mut program = vec![stmt(LD_W_ABS, AD_RANDOM), stmt(ALU_K | ALU_MOD, count)];
    let runs: Vec<(u32, u32)> =
        ready.iter().enumerate().map(|(i, &slot)| (u32::try_from(i).unwrap_or(u32::MAX), index_of(slot))).collect();
    search(&runs, &mut program);
    program
}

/// Each client address to the ready slot its bucket's rendezvous hash picks; with none ready,
/// to the primary. `key` is the cluster's random key (the same as the primary's own ip-hash).
pub(crate) fn sticky(ready: &[usize], key: u64) -> Vec<Insn> {
    if ready.is_empty() {
        return vec![stmt(RET_K, 0)];
    }
    let (k0, _) = bucket_keys(key);
    let mut program = vec![
        stmt(LD_W_ABS, AD_PROTOCOL),
        // IPv6: on to its address; IPv4: the next three instructions.
        Insn { code: JMP_JEQ_K, jt: 3, jf: 0, k: ETH_P_IPV6 },
        stmt(LD_W_ABS, net(12)), // IPv4 source address
        stmt(ALU_K | ALU_XOR, k0),
        stmt(JMP_JA, 6),        // over the IPv6 part, to the mixing
        stmt(LD_W_ABS, net(8)), // IPv6 source, first word of its /64
        stmt(ALU_K | ALU_XOR, k0),
        stmt(ALU_K | ALU_MUL, M1),
        stmt(MISC_TAX, 0),
        stmt(LD_W_ABS, net(12)), // second word of the /64
        Insn { code: ALU_X | ALU_XOR, jt: 0, jf: 0, k: 0 },
    ];
    // The mixing (a 32-bit finaliser), then the top bits are the bucket.
    program.extend([
        stmt(ALU_K | ALU_MUL, M1),
        stmt(MISC_TAX, 0),
        stmt(ALU_K | ALU_RSH, 15),
        stmt(ALU_X | ALU_XOR, 0),
        stmt(ALU_K | ALU_MUL, M2),
        stmt(MISC_TAX, 0),
        stmt(ALU_K | ALU_RSH, 13),
        stmt(ALU_X | ALU_XOR, 0),
        stmt(ALU_K | ALU_RSH, 32 - BUCKET_BITS),
    ]);
    search(&runs(&buckets(ready, key)), &mut program);
    program
}

/// Which slot each bucket goes to, by rendezvous hashing over `ready`.
fn buckets(ready: &[usize], key: u64) -> Vec<usize> {
    let (_, rendezvous_key) = bucket_keys(key);
    let rendezvous = Rendezvous::with_key(rendezvous_key);
    (0..BUCKETS).map(|bucket| rendezvous.pick_bucket(bucket, ready.iter().copied()).unwrap_or(0)).collect()
}

/// The program's address key and the buckets' rendezvous key, both from the cluster's key.
fn bucket_keys(key: u64) -> (u32, u64) {
    let low = u32::try_from(key & 0xffff_ffff).unwrap_or(0);
    (low, key.rotate_left(17) ^ 0x5bd1_e995)
}

/// Consecutive buckets going to the same slot, as (first bucket, listener index).
fn runs(table: &[usize]) -> Vec<(u32, u32)> {
    let mut runs: Vec<(u32, u32)> = Vec::new();
    for (bucket, &slot) in table.iter().enumerate() {
        let index = index_of(slot);
        if runs.last().is_none_or(|&(_, last)| last != index) {
            runs.push((u32::try_from(bucket).unwrap_or(u32::MAX), index));
        }
    }
    runs
}

/// Appends a binary search on the accumulator over `runs` (sorted by first value, the first
/// starting at 0) that returns the index of the run holding the accumulator's value.
fn search(runs: &[(u32, u32)], program: &mut Vec<Insn>) {
    if let [(_, index)] = runs {
        program.push(stmt(RET_K, *index));
        return;
    }
    let mid = runs.len() / 2;
    // A >= the right half's first value: take the jump over the left half.
    program.push(Insn { code: JMP_JGE_K, jt: 0, jf: 1, k: runs[mid].0 });
    let jump = program.len();
    program.push(stmt(JMP_JA, 0));
    search(&runs[..mid], program);
    program[jump].k = u32::try_from(program.len() - jump - 1).unwrap_or(u32::MAX);
    search(&runs[mid..], program);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    /// What the kernel gives the program: the packet's protocol, its IP header, a random number.
    struct Packet {
        ipv6: bool,
        header: Vec<u8>,
        random: u32,
    }

    impl Packet {
        fn from(ip: IpAddr, random: u32) -> Self {
            match ip {
                IpAddr::V4(v4) => {
                    let mut header = vec![0x45; 20];
                    header[12..16].copy_from_slice(&v4.octets());
                    Self { ipv6: false, header, random }
                }
                IpAddr::V6(v6) => {
                    let mut header = vec![0x60; 40];
                    header[8..24].copy_from_slice(&v6.octets());
                    Self { ipv6: true, header, random }
                }
            }
        }
    }

    /// A classic-BPF interpreter for the instructions above, as the kernel runs them.
    fn run(program: &[Insn], packet: &Packet) -> u32 {
        let (mut a, mut x, mut pc) = (0u32, 0u32, 0usize);
        loop {
            let insn = program[pc];
            pc += 1;
            match insn.code {
                LD_W_ABS if insn.k == AD_PROTOCOL => a = if packet.ipv6 { ETH_P_IPV6 } else { 0x0800 },
                LD_W_ABS if insn.k == AD_RANDOM => a = packet.random,
                LD_W_ABS => {
                    let at = usize::try_from(insn.k.wrapping_sub(NET as u32)).expect("a network-header offset");
                    a = u32::from_be_bytes(packet.header[at..at + 4].try_into().expect("four bytes"));
                }
                code if code == ALU_K | ALU_XOR => a ^= insn.k,
                code if code == ALU_X | ALU_XOR => a ^= x,
                code if code == ALU_K | ALU_MUL => a = a.wrapping_mul(insn.k),
                code if code == ALU_K | ALU_RSH => a >>= insn.k,
                code if code == ALU_K | ALU_MOD => a %= insn.k,
                MISC_TAX => x = a,
                JMP_JA => pc += usize::try_from(insn.k).expect("a jump"),
                JMP_JEQ_K => pc += usize::from(if a == insn.k { insn.jt } else { insn.jf }),
                JMP_JGE_K => pc += usize::from(if a >= insn.k { insn.jt } else { insn.jf }),
                RET_K => return insn.k,
                other => panic!("opcode {other:#x} is not interpreted"),
            }
        }
    }

    fn ipv4(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n.wrapping_mul(2_654_435_761) % 0x00ff_ffff))
    }

    #[test]
    fn with_no_ready_slot_everything_goes_to_the_primary() {
        for program in [spread(&[]), sticky(&[], 7)] {
            assert_eq!(program.len(), 1);
            assert_eq!(run(&program, &Packet::from(ipv4(1), 5)), 0);
        }
    }

    #[test]
    fn spread_reaches_every_ready_slot_and_only_those() {
        let program = spread(&[0, 2, 3]);
        let mut seen = std::collections::BTreeMap::new();
        for random in 0..3000 {
            *seen.entry(run(&program, &Packet::from(ipv4(1), random))).or_insert(0) += 1;
        }
        assert_eq!(seen.keys().copied().collect::<Vec<_>>(), [1, 3, 4], "slots 0, 2 and 3 are indices 1, 3 and 4");
        assert!(seen.values().all(|&n| n == 1000), "{seen:?}");
    }

    #[test]
    fn sticky_sends_each_address_where_its_bucket_goes() {
        let ready = [0, 1, 2, 4];
        let program = sticky(&ready, 0x1234_5678_9abc_def0);
        let table = buckets(&ready, 0x1234_5678_9abc_def0);
        let mut per_slot = [0usize; 6];
        for n in 0..4000 {
            let index = run(&program, &Packet::from(ipv4(n), n));
            // The same address goes to the same place whatever else varies.
            assert_eq!(index, run(&program, &Packet::from(ipv4(n), n ^ 0xffff)));
            per_slot[usize::try_from(index).expect("small")] += 1;
        }
        assert_eq!(per_slot[0], 0, "never the primary while slots are ready");
        assert_eq!(per_slot[4], 0, "slot 3 is not ready");
        for slot in ready {
            let share = per_slot[slot + 1];
            assert!((700..1300).contains(&share), "slot {slot} got {share} of 4000: {per_slot:?}");
        }
        assert!(table.iter().all(|slot| ready.contains(slot)));
    }

    #[test]
    fn neighbouring_addresses_spread_evenly() {
        // One /24's clients differ in their last byte only.
        for key in [1, 0xdead_beef_0bad_f00d, 7 << 40] {
            let program = sticky(&[0, 1, 2], key);
            let mut per_slot = [0usize; 4];
            for host in 0..=255u8 {
                per_slot[run(&program, &Packet::from(IpAddr::V4(Ipv4Addr::new(127, 0, 0, host)), 0)) as usize] += 1;
            }
            assert!(per_slot[1..].iter().all(|&n| (55..120).contains(&n)), "key {key:#x}: {per_slot:?}");
        }
    }

    #[test]
    fn ipv6_clients_are_grouped_by_their_64() {
        let program = sticky(&[0, 1, 2], 99);
        let mut homes = std::collections::BTreeSet::new();
        for prefix in 0..200u128 {
            let base = (0x2001_0db8_u128 << 96) | (prefix << 64);
            let home = run(&program, &Packet::from(IpAddr::V6(Ipv6Addr::from(base | 1)), 0));
            assert_eq!(home, run(&program, &Packet::from(IpAddr::V6(Ipv6Addr::from(base | 0xffff_0000_1234)), 1)));
            homes.insert(home);
        }
        assert_eq!(homes.into_iter().collect::<Vec<_>>(), [1, 2, 3], "every slot has some /64s");
    }

    #[test]
    fn a_new_slot_takes_about_its_share_and_nothing_else_moves() {
        let key = 42;
        let before = buckets(&[0, 1, 2, 3], key);
        let after = buckets(&[0, 1, 2, 3, 4], key);
        let moved: Vec<_> = before.iter().zip(&after).filter(|(b, a)| b != a).collect();
        assert!(moved.iter().all(|(_, &a)| a == 4), "a bucket only ever moves to the new slot");
        let share = moved.len() as f64 / BUCKETS as f64;
        assert!((0.12..0.28).contains(&share), "1/5 expected, {share} moved");
    }

    #[test]
    fn the_largest_cluster_fits_the_kernels_limit() {
        let all: Vec<usize> = (0..crate::config::MAX_WORKERS).collect();
        assert!(sticky(&all, 3).len() <= MAX_INSNS);
        assert!(spread(&all).len() <= MAX_INSNS);
        let program = spread(&all);
        assert_eq!(run(&program, &Packet::from(ipv4(0), 1023)), 1024);
    }
}
