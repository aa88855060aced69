//! Metrics, encoded by `prometheus-client`. Each stage keeps its own lock-free numbers (the RPC
//! client per provider, the tail per stage, the API) and is a [`Collector`] that encodes them on
//! each scrape (gauges such as lag are computed then); the API registers the collectors of the
//! stages it runs beside, so no stage depends on the server.

pub use prometheus_client::collector::Collector;
pub use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::encoding::{EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
pub use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicU64, Ordering};

/// What encoding returns.
pub type Result = std::result::Result<(), std::fmt::Error>;

/// Bucket bounds in seconds for delays: from 1 ms (a WebSocket head) to 10 min (a slow
/// compaction interval).
pub const DELAY_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0,
];

/// Bucket bounds for reorg depths, in blocks.
pub const DEPTH_BUCKETS: &[f64] = &[1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 64.0, 128.0];

/// A fixed-bucket histogram (cumulative buckets are computed when rendering).
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    /// Sum of observations, in millionths.
    sum_micro: AtomicU64,
}

impl Histogram {
    /// An empty histogram over `bounds` (ascending).
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micro: AtomicU64::new(0),
        }
    }

    /// Records one observation (negative values count as 0).
    pub fn observe(&self, v: f64) {
        let v = v.max(0.0);
        let i = self.bounds.iter().position(|b| v <= *b).unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micro.fetch_add((v * 1e6) as u64, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    fn samples(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut buckets: Vec<(f64, u64)> = self
            .bounds
            .iter()
            .zip(&self.counts)
            .map(|(b, c)| (*b, c.load(Ordering::Relaxed)))
            .collect();
        // The encoder writes infinity as the `+Inf` bucket and accumulates the counts.
        buckets.push((f64::INFINITY, self.counts[self.bounds.len()].load(Ordering::Relaxed)));
        let count = buckets.iter().map(|b| b.1).sum();
        (self.sum_micro.load(Ordering::Relaxed) as f64 / 1e6, count, buckets)
    }

    /// Writes the histogram.
    pub fn encode(&self, enc: &mut DescriptorEncoder<'_>, name: &str, help: &str) -> Result {
        let (sum, count, buckets) = self.samples();
        let mut m = enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
        m.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    /// Writes several histograms as one metric, one per label set.
    pub fn encode_family(
        enc: &mut DescriptorEncoder<'_>,
        name: &str,
        help: &str,
        series: &[(Vec<(&str, String)>, &Self)],
    ) -> Result {
        let mut m = enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
        for (labels, h) in series {
            let (sum, count, buckets) = h.samples();
            m.encode_family(labels)?.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
        }
        Ok(())
    }
}

/// Writes one gauge.
pub fn gauge(enc: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: f64) -> Result {
    let g = ConstGauge::new(v);
    g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)
}

/// Writes one counter; `name` without the `_total` the encoder appends.
pub fn counter(enc: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: u64) -> Result {
    let c = ConstCounter::new(v);
    c.encode(enc.encode_descriptor(name, help, None, c.metric_type())?)
}

/// Writes a counter with one sample per label set: `(labels, value)`.
pub fn counter_family(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    samples: &[(Vec<(&str, String)>, u64)],
) -> Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in samples {
        ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

/// Encodes a registry in the OpenMetrics text format (what `/metrics` serves; Prometheus reads
/// it with `Content-Type: application/openmetrics-text`).
pub fn encode(registry: &Registry) -> std::result::Result<String, std::fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}

/// The `Content-Type` of [`encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct One(Histogram);

    impl Collector for One {
        fn encode(&self, mut enc: DescriptorEncoder<'_>) -> Result {
            let series = [(vec![("stage", "x".to_string())], &self.0)];
            Histogram::encode_family(&mut enc, "d", "delay", &series)?;
            counter(&mut enc, "c", "a counter", 3)?;
            gauge(&mut enc, "g", "a gauge", 1.5)
        }
    }

    #[test]
    fn buckets_are_cumulative_and_count_everything() {
        let h = Histogram::new(&[1.0, 2.0]);
        for v in [0.5, 1.5, 1.7, 9.0] {
            h.observe(v);
        }
        assert_eq!(h.count(), 4);
        let mut r = Registry::default();
        r.register_collector(Box::new(One(h)));
        let s = encode(&r).unwrap();
        assert!(s.contains("d_bucket{le=\"1.0\",stage=\"x\"} 1\n"), "{s}");
        assert!(s.contains("d_bucket{le=\"2.0\",stage=\"x\"} 3\n"), "{s}");
        assert!(s.contains("d_bucket{le=\"+Inf\",stage=\"x\"} 4\n"), "{s}");
        assert!(s.contains("d_count{stage=\"x\"} 4\n"), "{s}");
        assert!(s.contains("d_sum{stage=\"x\"} 12.7\n"), "{s}");
        assert!(s.contains("# TYPE c counter\nc_total 3\n"), "{s}");
        assert!(s.contains("g 1.5\n"), "{s}");
        assert!(s.ends_with("# EOF\n"), "{s}");
    }
}
