//! Resource usage of the server under test and of the load tester itself: CPU time and resident
//! memory from `/proc/<pid>/stat` and `/proc/<pid>/status`, or from a Prometheus `/metrics`
//! endpoint (`process_cpu_seconds_total`, `process_resident_memory_bytes`).

use std::time::Duration;

/// One reading of a process's resources.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ProcSample {
    /// User + system CPU time, seconds.
    pub cpu_seconds: f64,
    /// Resident memory, bytes.
    pub rss_bytes: u64,
}

/// Why a reading failed.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// `/proc` could not be read (the process is gone?).
    #[error("reading /proc/{pid}: {source}")]
    Io {
        /// The process.
        pid: u32,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A `/proc` file or the metrics text did not have the expected shape.
    #[error("unexpected format: {0}")]
    Format(String),
    /// The metrics endpoint failed.
    #[error("metrics: {0}")]
    Http(#[from] reqwest::Error),
}

/// Clock ticks per second of `/proc/<pid>/stat` times (`getconf CLK_TCK`; 100 on Linux).
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|t| *t > 0.0)
            .unwrap_or(100.0)
    })
}

/// Parses the utime + stime fields of a `/proc/<pid>/stat` line into seconds.
pub fn parse_stat_cpu(stat: &str) -> Result<f64, ProcError> {
    // The command name is in parentheses and may contain spaces: fields start after the last ')'.
    let rest = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .ok_or_else(|| ProcError::Format("no ')' in stat".into()))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3 of the man page, so utime (14) is index 11, stime (15) 12.
    let get = |i: usize| -> Result<f64, ProcError> {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .ok_or_else(|| ProcError::Format(format!("stat field {}", i + 3)))
    };
    Ok((get(11)? + get(12)?) / clock_ticks())
}

/// Parses `VmRSS:  1234 kB` from `/proc/<pid>/status` into bytes.
pub fn parse_status_rss(status: &str) -> Result<u64, ProcError> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| ProcError::Format("no VmRSS in status".into()))
}

/// Reads the CPU time and RSS of a local process (`std::process::id()` for the load tester).
pub fn read_pid(pid: u32) -> Result<ProcSample, ProcError> {
    let io = |source| ProcError::Io { pid, source };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(io)?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(io)?;
    Ok(ProcSample {
        cpu_seconds: parse_stat_cpu(&stat)?,
        rss_bytes: parse_status_rss(&status)?,
    })
}

/// Reads a metric's value (first sample without labels or with any labels) from Prometheus text.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        if l.starts_with('#') {
            return None;
        }
        let rest = l.strip_prefix(name)?;
        let rest = if let Some(r) = rest.strip_prefix('{') {
            &r[r.find('}')? + 1..]
        } else {
            rest
        };
        if !rest.starts_with(' ') {
            return None;
        }
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Where the server's resources are read from.
#[derive(Debug, Clone)]
pub enum ServerProbe {
    /// A local process.
    Pid(u32),
    /// A Prometheus endpoint (`http://127.0.0.1:7880/metrics`).
    Metrics {
        /// The URL.
        url: String,
        /// A shared HTTP client.
        client: reqwest::Client,
    },
    /// Nothing: server figures are not reported.
    None,
}

impl ServerProbe {
    /// A probe for a metrics URL.
    pub fn metrics(url: impl Into<String>) -> ServerProbe {
        ServerProbe::Metrics {
            url: url.into(),
            client: reqwest::Client::new(),
        }
    }

    /// Reads the server's resources now (`Ok(None)` for [`ServerProbe::None`]).
    pub async fn read(&self) -> Result<Option<ProcSample>, ProcError> {
        match self {
            ServerProbe::Pid(pid) => read_pid(*pid).map(Some),
            ServerProbe::Metrics { url, client } => {
                let text = client
                    .get(url)
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await?
                    .error_for_status()?
                    .text()
                    .await?;
                // Greenroom's own counter has 10 ms resolution; the standard one whole seconds.
                let cpu = metric_value(&text, "greenroom_process_cpu_seconds_total")
                    .or_else(|| metric_value(&text, "process_cpu_seconds_total"))
                    .ok_or_else(|| ProcError::Format("no process_cpu_seconds_total".into()))?;
                let rss = metric_value(&text, "process_resident_memory_bytes")
                    .ok_or_else(|| ProcError::Format("no process_resident_memory_bytes".into()))?;
                Ok(Some(ProcSample {
                    cpu_seconds: cpu,
                    rss_bytes: rss as u64,
                }))
            }
            ServerProbe::None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_spaces_in_the_name() {
        let line = "1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 \
                    4 0 100 1000000 500 18446744073709551615";
        let cpu = parse_stat_cpu(line).unwrap_or(-1.0);
        assert!((cpu - 300.0 / clock_ticks()).abs() < 1e-9, "{cpu}");
        assert!(parse_stat_cpu("garbage").is_err());
    }

    #[test]
    fn rss_from_status() {
        let s = "Name:\tx\nVmPeak:\t  9000 kB\nVmRSS:\t  2048 kB\n";
        assert_eq!(parse_status_rss(s).ok(), Some(2048 * 1024));
        assert!(parse_status_rss("Name: x\n").is_err());
    }

    #[test]
    fn own_process_is_readable_and_uses_memory() {
        let s = read_pid(std::process::id());
        assert!(
            s.as_ref()
                .is_ok_and(|s| s.rss_bytes > 0 && s.cpu_seconds >= 0.0),
            "{s:?}"
        );
    }

    #[test]
    fn prometheus_text() {
        let t = "# HELP process_cpu_seconds_total x\n# TYPE process_cpu_seconds_total counter\n\
                 process_cpu_seconds_total 12.5\nprocess_resident_memory_bytes{a=\"b\"} 1.5e7\n\
                 process_cpu_seconds_total_other 3\n";
        assert_eq!(metric_value(t, "process_cpu_seconds_total"), Some(12.5));
        assert_eq!(
            metric_value(t, "process_resident_memory_bytes"),
            Some(1.5e7)
        );
        assert_eq!(metric_value(t, "missing"), None);
    }
}
