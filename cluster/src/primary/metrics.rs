//! The shell's part of the metrics: what only I/O can measure (the hand-off latency, each
//! worker's memory and CPU from `/proc`), the last snapshot of every worker (so that a
//! departed worker's counts stay in its slot's totals), and the encoding of a scrape.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::Duration,
};

use crate::{
    control::Status,
    metrics::{self, merge, Collect, CounterVec, Family, HistogramVec, Kind, Sample, Snapshot, Value, LATENCY_BUCKETS},
    supervisor::{Counters, Scrape, WorkerId},
};

/// Worker states as `herd ctl status` names them; each is reported, at 0 when empty, so a
/// dashboard's series do not appear and vanish.
const STATES: [&str; 6] = ["starting", "ready", "suspect", "draining", "retiring", "errored"];

/// Clock ticks per second in `/proc/PID/stat`: Linux reports CPU times in `USER_HZ`, which is
/// 100 on every architecture it runs on (a kernel ABI constant, unlike the kernel's own HZ).
const USER_HZ: f64 = 100.0;

/// What the shell keeps between scrapes.
pub(super) struct ShellMetrics {
    balance: &'static str,
    handoff: HistogramVec,
    /// Connections closed for their PROXY header, when the primary reads the headers
    /// (`--proxy-protocol` in a primary-accept mode; in shared mode the workers count them).
    proxy_rejections: Option<Arc<CounterVec>>,
    /// Each live worker's last snapshot, and its last CPU reading (seconds).
    last: HashMap<WorkerId, (usize, Vec<Family>)>,
    cpu: HashMap<WorkerId, f64>,
    /// What the departed workers of each slot counted, added up.
    departed: BTreeMap<usize, Vec<Family>>,
    departed_cpu: BTreeMap<usize, f64>,
}

impl ShellMetrics {
    pub(super) fn new(balance: &'static str, proxy_rejections: Option<Arc<CounterVec>>) -> Self {
        Self {
            balance,
            handoff: HistogramVec::new(
                "herd_handoff_latency_seconds",
                "Time from the primary accepting a connection to handing it to a worker",
                &[],
                LATENCY_BUCKETS,
            ),
            proxy_rejections,
            last: HashMap::new(),
            cpu: HashMap::new(),
            departed: BTreeMap::new(),
            departed_cpu: BTreeMap::new(),
        }
    }

    /// A connection went to a worker after waiting `waited` since its accept.
    pub(super) fn handed(&self, waited: Duration) {
        self.handoff.observe_duration(&[], waited);
    }

    /// A drained worker's last snapshot, sent just before it exits.
    pub(super) fn last_words(&mut self, worker: WorkerId, snapshot: serde_json::Value) {
        match serde_json::from_value::<Snapshot>(snapshot) {
            Ok(snapshot) => {
                self.last.insert(worker, (worker.slot, snapshot.families));
            }
            Err(err) => tracing::warn!(slot = worker.slot, "a worker's last metrics could not be read: {err}"),
        }
    }

    /// A worker process ended: its last counts join its slot's past.
    pub(super) fn departed(&mut self, worker: WorkerId) {
        if let Some((_, families)) = self.last.remove(&worker) {
            merge::add(self.departed.entry(worker.slot).or_default(), &families, false);
        }
        if let Some(cpu) = self.cpu.remove(&worker) {
            *self.departed_cpu.entry(worker.slot).or_default() += cpu;
        }
    }

    /// The Prometheus text of a scrape; `processes` are the live workers and their pids.
    pub(super) fn render(&mut self, scrape: &Scrape, processes: &[(WorkerId, u32)]) -> String {
        for &(worker, pid) in processes {
            if let Some(seconds) = cpu_seconds(pid) {
                self.cpu.insert(worker, seconds);
            }
        }
        let mut answered = Vec::new();
        for reply in &scrape.replies {
            let worker = processes.iter().find(|(w, pid)| *pid == reply.pid && w.slot == reply.slot);
            let Some(&(worker, _)) = worker else { continue };
            match serde_json::from_value::<Snapshot>(reply.payload.clone()) {
                Ok(snapshot) => {
                    self.last.insert(worker, (reply.slot, snapshot.families));
                    answered.push(worker);
                }
                Err(err) => tracing::warn!(slot = reply.slot, "a worker's metrics could not be read: {err}"),
            }
        }
        let mut families = self.cluster_families(scrape);
        families.extend(self.worker_families(&answered));
        metrics::encode(families).unwrap_or_else(|err| {
            tracing::error!("cannot encode the metrics: {err}");
            String::new()
        })
    }

    fn cluster_families(&mut self, scrape: &Scrape) -> Vec<Family> {
        let Scrape { status, counters, unanswered, .. } = scrape;
        let mut out = vec![
            gauge("herd_workers", "Worker processes by state", states(status)),
            counter_of_restarts(counters),
            counter(
                "herd_reloads",
                "Rollouts (reload, restart, memory limit, max requests) by outcome",
                counters
                    .rollouts
                    .iter()
                    .map(|((kind, outcome), n)| {
                        (vec![("kind", kind.replace(' ', "_")), ("outcome", (*outcome).to_owned())], *n as f64)
                    })
                    .collect(),
            ),
            gauge(
                "herd_queue_depth",
                "Connections the primary holds for want of a ready worker",
                vec![(vec![], status.queued as f64)],
            ),
            counter(
                "herd_connections_shed",
                "Connections the primary closed without a worker serving them, by reason",
                ["queue_timeout", "errored", "stopping", "fd_exhausted"]
                    .iter()
                    .map(|r| (vec![("reason", (*r).to_owned())], counters.shed.get(r).copied().unwrap_or(0) as f64))
                    .collect(),
            ),
            counter(
                "herd_connections_accepted",
                "Connections the primary accepted, by balance mode (0 in shared mode: workers accept)",
                vec![(vec![("balance", self.balance.to_owned())], counters.accepted as f64)],
            ),
        ];
        self.handoff.collect(&mut out);
        if let Some(rejections) = &self.proxy_rejections {
            rejections.collect(&mut out);
        }
        let mut rss: BTreeMap<usize, f64> = BTreeMap::new();
        let mut open: BTreeMap<usize, f64> = BTreeMap::new();
        let mut cpu = self.departed_cpu.clone();
        for (worker, seconds) in &self.cpu {
            *cpu.entry(worker.slot).or_default() += seconds;
        }
        for w in status.workers.iter().filter(|w| w.pid.is_some()) {
            if let Some(bytes) = w.rss_bytes {
                *rss.entry(w.slot).or_default() += bytes as f64;
            }
            if let Some(conns) = w.open_connections {
                *open.entry(w.slot).or_default() += conns as f64;
            }
        }
        let by_slot =
            |map: &BTreeMap<usize, f64>| map.iter().map(|(slot, v)| (vec![("slot", slot.to_string())], *v)).collect();
        out.push(gauge(
            "herd_worker_resident_memory_bytes",
            "Resident memory of each slot's worker processes",
            by_slot(&rss),
        ));
        out.push(counter(
            "herd_worker_cpu_seconds",
            "CPU time (user and system) of each slot's workers, past ones included",
            by_slot(&cpu),
        ));
        out.push(gauge(
            "herd_worker_open_connections",
            "Client connections each slot's workers hold open (as of their last heartbeat)",
            by_slot(&open),
        ));
        out.push(gauge(
            "herd_scrape_unanswered_workers",
            "Workers that did not answer this scrape in time (their counters are their last known)",
            vec![(vec![], *unanswered as f64)],
        ));
        out
    }

    /// Every slot's worker series: its past workers' counts plus its live workers' snapshots.
    fn worker_families(&self, answered: &[WorkerId]) -> Vec<Family> {
        let mut slots: BTreeMap<usize, Vec<Family>> = self.departed.clone();
        for (worker, (slot, families)) in &self.last {
            // A worker that did not answer this time keeps its last counts, not its old gauges.
            merge::add(slots.entry(*slot).or_default(), families, answered.contains(worker));
        }
        let mut all = Vec::new();
        for (slot, mut families) in slots {
            merge::label(&mut families, "slot", &slot.to_string());
            merge::add(&mut all, &families, true);
        }
        all
    }
}

fn states(status: &Status) -> Vec<(Vec<(&'static str, String)>, f64)> {
    STATES
        .iter()
        .map(|state| {
            let n = status.workers.iter().filter(|w| w.state == *state).count();
            (vec![("state", (*state).to_owned())], n as f64)
        })
        .collect()
}

fn counter_of_restarts(counters: &Counters) -> Family {
    counter(
        "herd_worker_restarts",
        "Serving workers that died and were replaced, by slot and cause (signal, exit, failed, hung)",
        counters
            .restarts
            .iter()
            .map(|((slot, cause), n)| (vec![("slot", slot.to_string()), ("cause", (*cause).to_owned())], *n as f64))
            .collect(),
    )
}

type Samples = Vec<(Vec<(&'static str, String)>, f64)>;

fn family(name: &str, help: &str, kind: Kind, samples: Samples) -> Family {
    Family {
        name: name.to_owned(),
        help: help.to_owned(),
        kind,
        samples: samples
            .into_iter()
            .map(|(labels, v)| Sample {
                labels: labels.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
                value: Value::Number(v),
            })
            .collect(),
    }
}

fn counter(name: &str, help: &str, samples: Samples) -> Family {
    family(name, help, Kind::Counter, samples)
}

fn gauge(name: &str, help: &str, samples: Samples) -> Family {
    family(name, help, Kind::Gauge, samples)
}

/// User plus system CPU seconds of a process, from `/proc/PID/stat`.
pub(super) fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / USER_HZ)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_a_cpu_reading() {
        let spent = (0..2_000_000u64).fold(0u64, |a, b| a.wrapping_add(b * b));
        assert!(spent > 0);
        assert!(cpu_seconds(std::process::id()).is_some_and(|s| s >= 0.0));
    }
}
