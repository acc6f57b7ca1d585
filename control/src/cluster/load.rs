//! This node's load for the registry: process CPU (from `/proc/self/stat`), joined
//! participants, and forwarded packets per second (from the media plane's counters).

use std::time::Instant;

use super::Load;
use crate::state::AppState;

/// Clock ticks per second of `/proc/<pid>/stat` times (`USER_HZ`, 100 on Linux).
const USER_HZ: f64 = 100.0;

/// Turns counters into rates between two samples.
#[derive(Debug, Default)]
pub(crate) struct Sampler {
    last: Option<(Instant, f64, f64)>,
}

impl Sampler {
    /// The load now; CPU and packet rates are over the time since the previous sample (0 at
    /// the first).
    pub(crate) fn sample(&mut self, state: &AppState, calls: u64) -> Load {
        let now = Instant::now();
        let cpu_secs = process_cpu_secs().unwrap_or(0.0);
        let forwarded = state
            .sfu
            .as_ref()
            .map(|s| forwarded_packets(&s.metrics_text()))
            .unwrap_or(0.0);
        let cores = std::thread::available_parallelism()
            .map(|n| n.get() as f64)
            .unwrap_or(1.0);
        let (cpu, pps) = match self.last {
            Some((at, c, f)) => {
                let dt = now.duration_since(at).as_secs_f64().max(1e-3);
                (
                    ((cpu_secs - c) / dt / cores).clamp(0.0, 1.0),
                    ((forwarded - f) / dt).max(0.0),
                )
            }
            None => (0.0, 0.0),
        };
        self.last = Some((now, cpu_secs, forwarded));
        Load {
            cpu,
            participants: state.session_count() as u64,
            pps,
            calls,
        }
    }
}

/// User plus system CPU seconds of this process.
fn process_cpu_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    parse_stat_cpu(&stat)
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line, in seconds. The command name
/// (field 2) may hold spaces and parentheses: fields are counted after its last `)`.
fn parse_stat_cpu(stat: &str) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After the name: field 3 (state) is the first; utime is field 14, the 12th here.
    let utime: f64 = fields.nth(11)?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    Some((utime + stime) / USER_HZ)
}

/// The sum of `greenroom_packets_forwarded_total` over its labels in a metrics text.
fn forwarded_packets(text: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with("greenroom_packets_forwarded_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_times_after_the_command_name() {
        let line = "42 (a (weird) name) S 1 2 3 4 5 6 7 8 9 10 250 150 0 0 20 0 1 0 100";
        assert_eq!(parse_stat_cpu(line), Some(4.0));
        assert_eq!(parse_stat_cpu("garbage"), None);
        assert!(process_cpu_secs().is_some());
    }

    #[test]
    fn sums_forwarded_packets_over_kinds() {
        let text = "# HELP greenroom_packets_forwarded_total x\n\
                    greenroom_packets_forwarded_total{kind=\"audio\"} 10\n\
                    greenroom_packets_forwarded_total{kind=\"video\"} 5\n\
                    greenroom_bytes_forwarded_total{kind=\"audio\"} 999\n";
        assert_eq!(forwarded_packets(text), 15.0);
    }
}
