//! The Prometheus text format (0.0.4), written by `prometheus-client` from families collected
//! at scrape time: the crate escapes names and values, adds `_total` to counters and lays out
//! histogram buckets, so herd never formats exposition text itself.

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, NoLabelSet},
    metrics::MetricType,
    registry::Registry,
};

use super::{Family, Kind, Value};

pub(crate) use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Encodes `families` (each name once) as Prometheus text.
pub(crate) fn encode(families: Vec<Family>) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Families(families)));
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)?;
    Ok(text)
}

#[derive(Debug)]
struct Families(Vec<Family>);

impl Collector for Families {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for family in &self.0 {
            let kind = match family.kind {
                Kind::Counter => MetricType::Counter,
                Kind::Gauge => MetricType::Gauge,
                Kind::Histogram => MetricType::Histogram,
            };
            let mut metric = encoder.encode_descriptor(&family.name, &family.help, None, kind)?;
            for sample in &family.samples {
                let mut labelled = metric.encode_family(&sample.labels)?;
                match (&sample.value, family.kind) {
                    (Value::Number(n), Kind::Counter) => {
                        labelled.encode_counter::<NoLabelSet, f64, f64>(n, None)?;
                    }
                    (Value::Number(n), _) => labelled.encode_gauge(n)?,
                    (Value::Histogram(h), _) => {
                        labelled.encode_histogram::<NoLabelSet>(
                            h.sum,
                            h.count,
                            &with_inf(&h.buckets, h.count),
                            None,
                        )?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// The buckets with the `+Inf` one the format requires (every observation).
fn with_inf(buckets: &[(f64, u64)], count: u64) -> Vec<(f64, u64)> {
    // prometheus-client expects per-bucket counts, not cumulative ones: it sums them itself.
    let mut previous = 0;
    let mut out: Vec<(f64, u64)> = buckets
        .iter()
        .map(|&(bound, cumulative)| {
            let own = cumulative.saturating_sub(previous);
            previous = cumulative;
            (bound, own)
        })
        .collect();
    out.push((f64::INFINITY, count.saturating_sub(previous)));
    out
}
