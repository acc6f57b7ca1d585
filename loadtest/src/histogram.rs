//! A log-linear latency histogram: constant memory, about 6% resolution, mergeable, and
//! subtractable (for per-interval percentiles from cumulative snapshots).

/// Values below this are counted exactly.
const LINEAR: u64 = 32;
/// Sub-buckets per power of two above [`LINEAR`] (4 bits: about 6% resolution).
const SUB_BITS: u32 = 4;
const SUB: usize = 1 << SUB_BITS;
/// Bucket count: exact values 0..32, then 16 sub-buckets for each power of two 2^5..2^40 µs.
const BUCKETS: usize = LINEAR as usize + (41 - 5) * SUB;

/// Counts of values (microseconds) in log-linear buckets. Empty histograms allocate nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LatencyHistogram {
    counts: Vec<u32>,
    total: u64,
}

fn bucket_of(v: u64) -> usize {
    if v < LINEAR {
        return v as usize;
    }
    let exp = 63 - v.leading_zeros();
    let exp = exp.min(40);
    let sub = ((v >> (exp - SUB_BITS)) as usize) & (SUB - 1);
    (LINEAR as usize + (exp as usize - 5) * SUB + sub).min(BUCKETS - 1)
}

/// The middle of a bucket's value range.
fn value_of(bucket: usize) -> u64 {
    if bucket < LINEAR as usize {
        return bucket as u64;
    }
    let i = bucket - LINEAR as usize;
    let exp = (i / SUB) as u32 + 5;
    let sub = (i % SUB) as u64;
    let width = 1u64 << (exp - SUB_BITS);
    (1u64 << exp) + sub * width + width / 2
}

impl LatencyHistogram {
    /// Counts one value.
    pub fn record(&mut self, us: u64) {
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS];
        }
        let b = bucket_of(us);
        self.counts[b] = self.counts[b].saturating_add(1);
        self.total += 1;
    }

    /// Number of values counted.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// Adds every count of `other`.
    pub fn merge(&mut self, other: &LatencyHistogram) {
        if other.counts.is_empty() {
            return;
        }
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS];
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a = a.saturating_add(*b);
        }
        self.total += other.total;
    }

    /// `self - earlier`, bucket by bucket (saturating): the values counted since `earlier` was
    /// a snapshot of the same histogram.
    pub fn since(&self, earlier: &LatencyHistogram) -> LatencyHistogram {
        if earlier.counts.is_empty() {
            return self.clone();
        }
        let mut out = self.clone();
        let mut total = 0u64;
        for (a, b) in out.counts.iter_mut().zip(&earlier.counts) {
            *a = a.saturating_sub(*b);
            total += u64::from(*a);
        }
        out.total = total;
        out
    }

    /// The value at quantile `q` (0.0..=1.0) in microseconds, or `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for (i, c) in self.counts.iter().enumerate() {
            seen += u64::from(*c);
            if seen >= rank {
                return Some(value_of(i));
            }
        }
        self.counts.iter().rposition(|c| *c > 0).map(value_of)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_close() {
        let mut last = 0;
        for v in [0u64, 1, 31, 32, 33, 100, 1_000, 10_000, 123_456, 10_000_000] {
            let b = bucket_of(v);
            assert!(b >= last, "bucket order at {v}");
            last = b;
            let back = value_of(b);
            let err = back.abs_diff(v) as f64 / (v.max(1)) as f64;
            assert!(err <= 0.07, "{v} -> bucket {b} -> {back}");
        }
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn quantiles_and_interval_difference() {
        let mut h = LatencyHistogram::default();
        assert_eq!(h.quantile(0.5), None);
        for v in 1..=100u64 {
            h.record(v * 1000);
        }
        let p50 = h.quantile(0.5).unwrap_or(0);
        let p99 = h.quantile(0.99).unwrap_or(0);
        assert!((47_000..=53_000).contains(&p50), "p50 {p50}");
        assert!((93_000..=105_000).contains(&p99), "p99 {p99}");
        let snap = h.clone();
        for _ in 0..10 {
            h.record(5);
        }
        let d = h.since(&snap);
        assert_eq!(d.count(), 10);
        assert_eq!(d.quantile(0.99), Some(5));
        let mut m = LatencyHistogram::default();
        m.merge(&d);
        m.merge(&snap);
        assert_eq!(m.count(), 110);
    }
}
