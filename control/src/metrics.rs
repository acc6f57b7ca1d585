//! Prometheus metrics at `GET /metrics`: control-plane counters registered here, process CPU and
//! memory from the process collector, and the media plane's counters read at scrape time.

use std::sync::{Arc, LazyLock};

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use prometheus::{
    register_histogram, register_int_counter_vec, register_int_gauge, Encoder, Histogram,
    IntCounterVec, IntGauge, TextEncoder,
};

use crate::state::AppState;

fn must<T>(r: prometheus::Result<T>, name: &str) -> T {
    match r {
        Ok(m) => m,
        // Names are constants registered once in a LazyLock: a failure is a programming error
        // caught by the unit test below.
        Err(e) => panic!("metric {name}: {e}"),
    }
}

/// Calls that exist (not ended).
pub static CALLS: LazyLock<IntGauge> = LazyLock::new(|| {
    must(
        register_int_gauge!("greenroom_calls", "Calls in memory"),
        "calls",
    )
});

/// Joined sessions.
pub static PARTICIPANTS: LazyLock<IntGauge> = LazyLock::new(|| {
    must(
        register_int_gauge!("greenroom_participants", "Joined participant sessions"),
        "participants",
    )
});

/// Time to handle a join (token verified → `joined` queued).
pub static JOIN_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    must(
        register_histogram!(
            "greenroom_join_seconds",
            "Time to handle a join request",
            vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0]
        ),
        "join_seconds",
    )
});

/// Call events emitted, by type.
pub static EVENTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    must(
        register_int_counter_vec!("greenroom_events_total", "Call events emitted", &["type"]),
        "events",
    )
});

/// Webhook deliveries by result (delivered, retried, dropped).
pub static WEBHOOKS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    must(
        register_int_counter_vec!(
            "greenroom_webhooks_total",
            "Webhook delivery attempts by result",
            &["result"]
        ),
        "webhooks",
    )
});

/// Ringing calls by outcome.
pub static RING_OUTCOMES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    must(
        register_int_counter_vec!(
            "greenroom_ring_outcomes_total",
            "Ringing calls by outcome",
            &["outcome"]
        ),
        "ring_outcomes",
    )
});

/// Registers the process collector once (CPU seconds, resident memory, open fds).
fn register_process() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        #[cfg(target_os = "linux")]
        {
            let pc = prometheus::process_collector::ProcessCollector::for_self();
            if let Err(e) = prometheus::register(Box::new(pc)) {
                tracing::warn!("process metrics unavailable: {e}");
            }
        }
    });
}

/// This process's user + system CPU time in seconds from `/proc/self/stat`, at the kernel's
/// 10 ms resolution (`process_cpu_seconds_total` of the process collector counts whole
/// seconds, too coarse for a 10-second load-test window). `None` off Linux or on a bad read.
fn precise_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    cpu_seconds_of_stat(&stat)
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line, in seconds (USER_HZ = 100).
fn cpu_seconds_of_stat(stat: &str) -> Option<f64> {
    // The command name is in parentheses and may hold spaces: count fields after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: f64 = fields.next()?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// Renders every metric in the Prometheus text format.
pub fn render(state: &AppState) -> String {
    register_process();
    LazyLock::force(&CALLS);
    LazyLock::force(&PARTICIPANTS);
    LazyLock::force(&JOIN_SECONDS);
    LazyLock::force(&EVENTS);
    LazyLock::force(&WEBHOOKS);
    LazyLock::force(&RING_OUTCOMES);
    PARTICIPANTS.set(state.session_count() as i64);
    CALLS.set(state.call_count() as i64);
    let mut buf = Vec::new();
    let encoder = TextEncoder::new();
    if let Err(e) = encoder.encode(&prometheus::gather(), &mut buf) {
        tracing::error!("encoding metrics: {e}");
    }
    let mut text = String::from_utf8_lossy(&buf).into_owned();
    if let Some(cpu) = precise_cpu_seconds() {
        text.push_str(
            "# HELP greenroom_process_cpu_seconds_total User and system CPU time of this process, \
             10 ms resolution\n# TYPE greenroom_process_cpu_seconds_total counter\n",
        );
        text.push_str(&format!("greenroom_process_cpu_seconds_total {cpu}\n"));
    }
    if let Some(sfu) = &state.sfu {
        text.push_str(&sfu.metrics_text());
    }
    text
}

/// `GET /metrics`.
pub async fn handler(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        render(&state),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_seconds_from_a_stat_line_with_spaces_in_the_name() {
        let line = "42 (a (weird) name) S 1 2 3 4 5 6 7 8 9 10 250 75 0 0 20 0 1 0";
        assert_eq!(cpu_seconds_of_stat(line), Some(3.25));
        assert_eq!(cpu_seconds_of_stat("garbage"), None);
        assert_eq!(cpu_seconds_of_stat("1 (x) S 1 2"), None);
        assert!(precise_cpu_seconds().is_some_and(|c| c >= 0.0));
    }

    #[test]
    fn registers_and_renders() {
        let state = AppState::new(crate::config::Config::default(), None);
        EVENTS.with_label_values(&["call.ended"]).inc();
        let text = render(&state);
        assert!(
            text.contains("greenroom_events_total{type=\"call.ended\"}"),
            "{text}"
        );
        assert!(text.contains("greenroom_participants 0"));
    }
}
