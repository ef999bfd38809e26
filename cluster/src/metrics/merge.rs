//! Adding snapshots together: a slot's past workers and its live ones, and the cluster's
//! families from every slot.

use super::{Family, Kind, Sample, Value};

/// Adds `other` into `total`: counters and histograms are summed per label set; gauges too
/// when `gauges` (live processes), and left out otherwise (a departed worker's in-flight
/// requests are not in flight any more).
pub(crate) fn add(total: &mut Vec<Family>, other: &[Family], gauges: bool) {
    for family in other {
        if family.kind == Kind::Gauge && !gauges {
            continue;
        }
        let i = match total.iter().position(|f| f.name == family.name) {
            Some(i) => i,
            None => {
                total.push(Family { samples: Vec::new(), ..family.clone() });
                total.len() - 1
            }
        };
        let into = &mut total[i];
        if into.kind != family.kind {
            continue; // two collectors disagree on a name: keep the first's
        }
        for sample in &family.samples {
            match into.samples.iter_mut().find(|s| s.labels == sample.labels) {
                Some(existing) => add_value(&mut existing.value, &sample.value),
                None => into.samples.push(sample.clone()),
            }
        }
    }
}

fn add_value(into: &mut Value, other: &Value) {
    match (into, other) {
        (Value::Number(a), Value::Number(b)) => *a += b,
        (Value::Histogram(a), Value::Histogram(b)) if same_bounds(&a.buckets, &b.buckets) => {
            for (bucket, (_, n)) in a.buckets.iter_mut().zip(&b.buckets) {
                bucket.1 += n;
            }
            a.sum += b.sum;
            a.count += b.count;
        }
        _ => {} // incompatible shapes (a build that changed its buckets): keep what was there
    }
}

fn same_bounds(a: &[(f64, u64)], b: &[(f64, u64)]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.0 == y.0)
}

/// Puts `name="value"` first in every sample's labels.
pub(crate) fn label(families: &mut [Family], name: &str, value: &str) {
    for family in families {
        for Sample { labels, .. } in &mut family.samples {
            labels.insert(0, (name.to_owned(), value.to_owned()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::HistogramValue;

    fn family(kind: Kind, value: Value) -> Family {
        Family {
            name: "x".into(),
            help: "x".into(),
            kind,
            samples: vec![Sample { labels: vec![("a".into(), "1".into())], value }],
        }
    }

    #[test]
    fn counters_and_histograms_add_up_and_gauges_only_when_live() {
        let mut total = vec![family(Kind::Counter, Value::Number(2.0))];
        add(&mut total, &[family(Kind::Counter, Value::Number(3.0))], false);
        assert_eq!(total[0].samples[0].value, Value::Number(5.0));
        let h = |n| Value::Histogram(HistogramValue { buckets: vec![(1.0, n)], sum: n as f64, count: n });
        let mut total = vec![family(Kind::Histogram, h(1))];
        add(&mut total, &[family(Kind::Histogram, h(2))], false);
        assert_eq!(total[0].samples[0].value, h(3));
        let mut total = Vec::new();
        add(&mut total, &[family(Kind::Gauge, Value::Number(7.0))], false);
        assert!(total.is_empty(), "a departed worker's gauges are not added");
        add(&mut total, &[family(Kind::Gauge, Value::Number(7.0))], true);
        label(&mut total, "slot", "3");
        assert_eq!(total[0].samples[0].labels[0], ("slot".to_owned(), "3".to_owned()));
    }
}
