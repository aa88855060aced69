//! Lock-free counters and histograms rendered in the Prometheus text format. Each stage keeps its
//! own numbers (the RPC client per provider, the tail per stage) and renders them; the HTTP
//! service only concatenates the texts, so no stage depends on the server.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

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

    /// Writes `name_bucket`, `name_sum` and `name_count` lines with `labels` (`k="v"` pairs,
    /// comma-separated, may be empty).
    pub fn render(&self, out: &mut String, name: &str, help: &str, labels: &str) {
        header(out, name, help, "histogram");
        self.render_series(out, name, labels);
    }

    /// Writes the sample lines only (several label sets share one `# HELP`/`# TYPE` header).
    pub fn render_series(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cum = 0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            cum += c.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cum}");
        }
        cum += self.counts[self.bounds.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cum}");
        let sum = self.sum_micro.load(Ordering::Relaxed) as f64 / 1e6;
        let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {cum}");
    }
}

/// Writes the `# HELP` and `# TYPE` lines of a metric.
pub fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Writes one gauge or counter with its header.
pub fn single(out: &mut String, name: &str, help: &str, kind: &str, value: f64) {
    header(out, name, help, kind);
    let _ = writeln!(out, "{name} {value}");
}

/// Escapes a label value.
pub fn label_value(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_count_everything() {
        let h = Histogram::new(&[1.0, 2.0]);
        for v in [0.5, 1.5, 1.7, 9.0] {
            h.observe(v);
        }
        let mut s = String::new();
        h.render(&mut s, "d", "delay", "stage=\"x\"");
        assert!(s.contains("d_bucket{stage=\"x\",le=\"1\"} 1\n"), "{s}");
        assert!(s.contains("d_bucket{stage=\"x\",le=\"2\"} 3\n"), "{s}");
        assert!(s.contains("d_bucket{stage=\"x\",le=\"+Inf\"} 4\n"), "{s}");
        assert!(s.contains("d_count{stage=\"x\"} 4\n"), "{s}");
        assert!(s.contains("d_sum{stage=\"x\"} 12.7\n"), "{s}");
        assert_eq!(h.count(), 4);
    }
}
