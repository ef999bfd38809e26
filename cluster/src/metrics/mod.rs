//! Metrics: what a worker records, what it answers when the primary scrapes it, and how the
//! primary turns everything into the Prometheus text format.
//!
//! A worker keeps its series in memory ([`WorkerMetrics`]: the cluster's own HTTP series, and
//! whatever the application registers with [`WorkerMetrics::register`]). Nothing is pushed:
//! when something scrapes the primary (`GET /metrics` on `--metrics-bind`, or
//! `herd ctl metrics`), the primary asks every worker for a [`Snapshot`] over the IPC socket
//! (the gather machinery of `supervisor/gatherings.rs`), adds its own cluster series, labels
//! every worker series by `slot` and encodes the lot with `prometheus-client`. The primary
//! keeps the last snapshot of each worker and adds it to its slot's totals once the worker is
//! gone, so a counter never goes down because a worker was replaced. A worker that drains sends
//! its final snapshot (`ToPrimary::Final`) just before it exits; one that crashes or is killed
//! loses what it counted since the last scrape.
//!
//! Series names are listed in the README (`Metrics`).

mod encode;
pub(crate) mod http;
pub(crate) mod merge;

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicI64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use serde::{Deserialize, Serialize};

pub(crate) use encode::{encode, CONTENT_TYPE};

/// Upper bounds (seconds) of the latency histograms: 0.5 ms to 10 s, roughly ×2.5 apart.
pub const LATENCY_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// What one process reports: a list of metric families.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Its families, in the order they are encoded.
    pub families: Vec<Family>,
}

/// One metric: its name (without the `_total` a counter gets when encoded), help, type and
/// samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Family {
    /// `herd_http_requests` (encoded as `herd_http_requests_total`).
    pub name: String,
    /// One line, without a final period (the encoder adds one).
    pub help: String,
    /// Counter, gauge or histogram.
    pub kind: Kind,
    /// One per label set.
    pub samples: Vec<Sample>,
}

/// A metric's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Only goes up (summed over a slot's past workers).
    Counter,
    /// A value now (only live workers count).
    Gauge,
    /// Observations in cumulative buckets (summed like counters).
    Histogram,
}

/// One label set's value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Label names and values, in order.
    pub labels: Vec<(String, String)>,
    /// Its value.
    pub value: Value,
}

/// A sample's value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Value {
    /// A counter's or a gauge's.
    Number(f64),
    /// A histogram's.
    Histogram(HistogramValue),
}

/// A histogram: cumulative counts per upper bound (`+Inf` implied by `count`), and the sum.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistogramValue {
    /// `(upper bound, observations ≤ it)`, bounds ascending.
    pub buckets: Vec<(f64, u64)>,
    /// Sum of the observations.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
}

impl HistogramValue {
    fn empty(bounds: &[f64]) -> Self {
        Self { buckets: bounds.iter().map(|&b| (b, 0)).collect(), sum: 0.0, count: 0 }
    }

    fn observe(&mut self, value: f64) {
        for (bound, count) in &mut self.buckets {
            if value <= *bound {
                *count += 1;
            }
        }
        self.sum += value;
        self.count += 1;
    }
}

/// Something that adds families to a snapshot when the worker is scraped.
pub trait Collect: Send + Sync {
    /// Appends this collector's families.
    fn collect(&self, out: &mut Vec<Family>);
}

fn labelled(names: &[&'static str], values: &[String]) -> Vec<(String, String)> {
    names.iter().zip(values).map(|(n, v)| ((*n).to_owned(), v.clone())).collect()
}

/// A counter per label set (label values in the order of the names given to [`CounterVec::new`]).
#[derive(Debug)]
pub struct CounterVec {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    values: Mutex<BTreeMap<Vec<String>, u64>>,
}

impl CounterVec {
    /// A counter family; `name` without `_total`.
    pub fn new(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Self {
        Self { name, help, labels, values: Mutex::new(BTreeMap::new()) }
    }

    /// Adds `n` to the counter of these label values.
    pub fn add(&self, values: &[&str], n: u64) {
        if let Ok(mut map) = self.values.lock() {
            let key: Vec<String> = values.iter().map(|v| (*v).to_owned()).collect();
            *map.entry(key).or_default() += n;
        }
    }

    /// Adds one.
    pub fn inc(&self, values: &[&str]) {
        self.add(values, 1);
    }

    /// The counter of these label values (0 if never counted).
    pub fn get(&self, values: &[&str]) -> u64 {
        let key: Vec<String> = values.iter().map(|v| (*v).to_owned()).collect();
        self.values.lock().ok().and_then(|map| map.get(&key).copied()).unwrap_or(0)
    }
}

impl Collect for CounterVec {
    fn collect(&self, out: &mut Vec<Family>) {
        let samples = self.values.lock().map_or_else(
            |_| Vec::new(),
            |map| {
                map.iter()
                    .map(|(values, n)| Sample {
                        labels: labelled(self.labels, values),
                        value: Value::Number(*n as f64),
                    })
                    .collect()
            },
        );
        out.push(Family { name: self.name.to_owned(), help: self.help.to_owned(), kind: Kind::Counter, samples });
    }
}

/// A histogram per label set.
#[derive(Debug)]
pub struct HistogramVec {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    bounds: &'static [f64],
    values: Mutex<BTreeMap<Vec<String>, HistogramValue>>,
}

impl HistogramVec {
    /// A histogram family with these bucket upper bounds (ascending).
    pub fn new(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
        bounds: &'static [f64],
    ) -> Self {
        Self { name, help, labels, bounds, values: Mutex::new(BTreeMap::new()) }
    }

    /// Records one observation (seconds, for a duration).
    pub fn observe(&self, values: &[&str], value: f64) {
        if let Ok(mut map) = self.values.lock() {
            let key: Vec<String> = values.iter().map(|v| (*v).to_owned()).collect();
            map.entry(key).or_insert_with(|| HistogramValue::empty(self.bounds)).observe(value);
        }
    }

    /// Records a duration, in seconds.
    pub fn observe_duration(&self, values: &[&str], duration: Duration) {
        self.observe(values, duration.as_secs_f64());
    }
}

impl Collect for HistogramVec {
    fn collect(&self, out: &mut Vec<Family>) {
        let samples = self.values.lock().map_or_else(
            |_| Vec::new(),
            |map| {
                map.iter()
                    .map(|(values, h)| Sample {
                        labels: labelled(self.labels, values),
                        value: Value::Histogram(h.clone()),
                    })
                    .collect()
            },
        );
        out.push(Family { name: self.name.to_owned(), help: self.help.to_owned(), kind: Kind::Histogram, samples });
    }
}

/// One gauge without labels.
#[derive(Debug)]
pub struct Gauge {
    name: &'static str,
    help: &'static str,
    value: AtomicI64,
}

impl Gauge {
    /// A gauge at 0.
    pub fn new(name: &'static str, help: &'static str) -> Self {
        Self { name, help, value: AtomicI64::new(0) }
    }

    /// Adds `delta` (negative to subtract).
    pub fn add(&self, delta: i64) {
        self.value.fetch_add(delta, Ordering::Relaxed);
    }

    /// Its value now.
    pub fn get(&self) -> i64 {
        self.value.load(Ordering::Relaxed)
    }
}

impl Collect for Gauge {
    fn collect(&self, out: &mut Vec<Family>) {
        let samples = vec![Sample { labels: Vec::new(), value: Value::Number(self.get() as f64) }];
        out.push(Family { name: self.name.to_owned(), help: self.help.to_owned(), kind: Kind::Gauge, samples });
    }
}

/// The series a worker records about its own HTTP traffic (`crate::conn` and the worker's
/// middleware fill them).
#[derive(Debug)]
pub(crate) struct HttpSeries {
    pub(crate) requests: CounterVec,
    pub(crate) duration: HistogramVec,
    pub(crate) in_flight: Gauge,
    pub(crate) queue_time: HistogramVec,
}

impl HttpSeries {
    fn new() -> Self {
        Self {
            requests: CounterVec::new(
                "herd_http_requests",
                "HTTP requests answered, by route template, method and status class",
                &["route", "method", "status"],
            ),
            duration: HistogramVec::new(
                "herd_http_request_duration_seconds",
                "Time from a request reaching the app to its response head, by route template",
                &["route"],
                LATENCY_BUCKETS,
            ),
            in_flight: Gauge::new("herd_http_requests_in_flight", "Requests being handled now"),
            queue_time: HistogramVec::new(
                "herd_queue_time_seconds",
                "Primary-accept modes: time from the primary accepting a connection to its first request reaching the app",
                &[],
                LATENCY_BUCKETS,
            ),
        }
    }
}

/// A worker's metrics: the cluster's series and the application's collectors. Cheap to clone.
#[derive(Clone)]
pub struct WorkerMetrics {
    inner: Arc<Inner>,
}

struct Inner {
    http: HttpSeries,
    collectors: Mutex<Vec<Arc<dyn Collect>>>,
}

impl std::fmt::Debug for WorkerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerMetrics").finish_non_exhaustive()
    }
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        Self { inner: Arc::new(Inner { http: HttpSeries::new(), collectors: Mutex::new(Vec::new()) }) }
    }
}

impl WorkerMetrics {
    /// Adds a collector whose families join this worker's snapshot at every scrape. Name
    /// application series `herd_*` or after the app, never a cluster series' name.
    pub fn register(&self, collector: Arc<dyn Collect>) {
        if let Ok(mut collectors) = self.inner.collectors.lock() {
            collectors.push(collector);
        }
    }

    /// Everything this worker reports now.
    pub fn snapshot(&self) -> Snapshot {
        let mut families = Vec::new();
        let http = &self.inner.http;
        http.requests.collect(&mut families);
        http.duration.collect(&mut families);
        http.in_flight.collect(&mut families);
        http.queue_time.collect(&mut families);
        let collectors = self.inner.collectors.lock().map(|c| c.clone()).unwrap_or_default();
        for collector in collectors {
            collector.collect(&mut families);
        }
        Snapshot { families }
    }

    pub(crate) fn http(&self) -> &HttpSeries {
        &self.inner.http
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_count_cumulatively_and_counters_by_label_set() {
        let h = HistogramVec::new("h", "a histogram", &["route"], &[0.1, 1.0]);
        h.observe(&["/"], 0.05);
        h.observe(&["/"], 0.5);
        h.observe(&["/"], 5.0);
        let mut out = Vec::new();
        h.collect(&mut out);
        let Value::Histogram(v) = &out[0].samples[0].value else { panic!("a histogram") };
        assert_eq!(v.buckets, vec![(0.1, 1), (1.0, 2)]);
        assert_eq!((v.count, v.sum), (3, 5.55));
        let c = CounterVec::new("c", "a counter", &["kind"]);
        c.inc(&["a"]);
        c.add(&["a"], 2);
        c.inc(&["b"]);
        assert_eq!((c.get(&["a"]), c.get(&["b"]), c.get(&["z"])), (3, 1, 0));
    }
}
