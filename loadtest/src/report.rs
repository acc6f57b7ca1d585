//! Report writers: a text table, a JSON file and a self-contained HTML page with inline SVG
//! charts (throughput, loss, latency and CPU over time). No external assets.

use std::fmt::Write as _;

use crate::revoke::RevokeSummary;
use crate::runner::{RunResult, Sample, Summary, PUBLISHER_RATE_WARN_PCT};

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.digits$}"))
}

/// Figures that share a cell: `a / b / c`.
fn slash<const N: usize>(parts: [String; N]) -> String {
    parts.join(" / ")
}

/// A figure and, in parentheses, the one it is read against: `a (b)`.
fn paren(a: String, b: String) -> String {
    format!("{a} ({b})")
}

/// The rows of the summary table: (label, value).
pub fn rows(s: &Summary) -> Vec<(&'static str, String)> {
    vec![
        ("target", s.target.clone()),
        ("scenario", s.scenario.clone()),
        ("bots", s.bots.clone()),
        ("transport", s.transport.clone()),
        (
            "joined / failed",
            format!("{} / {}", s.joined, s.join_failures),
        ),
        (
            "join time p50 / p99 (ms)",
            slash([opt(s.join_time.p50_ms, 0), opt(s.join_time.p99_ms, 0)]),
        ),
        (
            "first media p50 / p99 (ms)",
            slash([opt(s.first_media.p50_ms, 0), opt(s.first_media.p99_ms, 0)]),
        ),
        ("window (s)", format!("{:.1}", s.window_secs)),
        (
            "forwarded pkt/s (expected)",
            format!("{:.0} ({:.0})", s.forwarded_pps, s.expected_pps),
        ),
        (
            "packets sent / forwarded",
            format!("{} / {}", s.sent_packets, s.forwarded_packets),
        ),
        (
            "publisher pkt/s sent (nominal)",
            format!(
                "{:.0} ({:.0}): {}",
                s.sent_pps,
                s.nominal_sent_pps,
                publisher_rate(s)
            ),
        ),
        (
            "loss (%)",
            format!("{:.3} ({} pkts)", s.loss_pct, s.lost_packets),
        ),
        (
            "latency p50 / p99 / p99.9 (ms)",
            slash([
                opt(s.latency_p50_ms, 2),
                opt(s.latency_p99_ms, 2),
                opt(s.latency_p999_ms, 2),
            ]),
        ),
        (
            "video rx kbit/s per track",
            opt(s.video_rx_kbps_per_track, 0),
        ),
        (
            "video layers q / h / f (pkts)",
            format!(
                "{} / {} / {}",
                s.video_layer_packets[0], s.video_layer_packets[1], s.video_layer_packets[2]
            ),
        ),
        ("server CPU (% of a core)", opt(s.server_cpu_pct, 1)),
        (
            "server CPU-s per M fwd pkts",
            opt(s.server_cpu_s_per_mpkt, 2),
        ),
        (
            "floor ns/pkt (at mean payload B)",
            paren(opt(s.floor_ns_per_packet, 0), opt(s.mean_payload_bytes, 0)),
        ),
        (
            "server CPU per fwd pkt / floor",
            opt(s.server_cpu_x_floor, 2),
        ),
        (
            "server datagrams out/s (per media pkt)",
            paren(
                opt(s.server_datagrams_out_per_s, 0),
                opt(s.datagrams_per_media_packet, 3),
            ),
        ),
        (
            "server datagrams out/s by kind",
            s.datagrams_by_kind_per_s.map_or("-".into(), |r| {
                format!(
                    "RTP {:.1} (no media {:.1}, padding bit {:.1}) + RTCP {:.1} + STUN {:.1} + other {:.1}",
                    r.rtp, r.rtp_no_media, r.rtp_padded, r.rtcp, r.stun, r.other
                )
            }),
        ),
        (
            "server RSS before / after (MiB)",
            slash([
                opt(s.server_rss_before_mib, 1),
                opt(s.server_rss_after_mib, 1),
            ]),
        ),
        (
            "server KiB per subscriber",
            opt(s.server_kib_per_subscriber, 0),
        ),
        ("server KiB per listener", kib_per_listener(s)),
        (
            "load tester CPU (% of a core)",
            format!("{:.1}", s.bot_cpu_pct),
        ),
        (
            "load tester µs CPU per rx pkt",
            opt(s.bot_cpu_us_per_packet, 1),
        ),
    ]
}

/// The summary as an aligned text table.
pub fn table(s: &Summary) -> String {
    let rows = rows(s);
    let w = rows
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (k, v) in rows {
        let _ = writeln!(out, "{k:<w$}  {v}");
    }
    if let Some(r) = &s.revoke {
        out.push_str(&revoke_lines(r));
    }
    if let Some(w) = publisher_rate_warning(s) {
        let _ = writeln!(out, "{w}");
    }
    if s.bots_heavier_than_server == Some(true) {
        let _ = writeln!(
            out,
            "note: the bots used more CPU than the server; on a shared machine the load tester, \
             not the server, may be the limit"
        );
    }
    if !s.errors.is_empty() {
        let _ = writeln!(out, "errors (first {}):", s.errors.len());
        for e in s.errors.iter().take(5) {
            let _ = writeln!(out, "  {e}");
        }
    }
    out
}

/// Several summaries side by side (e.g. Greenroom vs Janus).
pub fn side_by_side(summaries: &[&Summary]) -> String {
    let cols: Vec<Vec<(&'static str, String)>> = summaries.iter().map(|s| rows(s)).collect();
    let Some(first) = cols.first() else {
        return String::new();
    };
    let w = first
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    let cw = cols
        .iter()
        .flat_map(|c| c.iter().map(|(_, v)| v.chars().count()))
        .max()
        .unwrap_or(0)
        .max(10);
    let mut out = String::new();
    for (i, (k, _)) in first.iter().enumerate() {
        let _ = write!(out, "{k:<w$}");
        for c in &cols {
            let v = c.get(i).map_or("", |(_, v)| v.as_str());
            let _ = write!(out, "  {v:>cw$}");
        }
        out.push('\n');
    }
    out
}

/// The publishers' rate as a percentage of nominal, with `LOW` below
/// [`PUBLISHER_RATE_WARN_PCT`]: `99.8 %`, `51.0 % LOW`, or `-` without a nominal rate.
fn publisher_rate(s: &Summary) -> String {
    match s.publisher_rate_pct {
        None => "-".into(),
        Some(p) if p < PUBLISHER_RATE_WARN_PCT => format!("{p:.1} % LOW"),
        Some(p) => format!("{p:.1} %"),
    }
}

/// A loud warning when the publishers sent less than [`PUBLISHER_RATE_WARN_PCT`] of their
/// nominal rate: the load tester, not the server, limited the run.
pub fn publisher_rate_warning(s: &Summary) -> Option<String> {
    let p = s
        .publisher_rate_pct
        .filter(|p| *p < PUBLISHER_RATE_WARN_PCT)?;
    Some(format!(
        "WARNING: {} on {}: the publishers sent {p:.1} % of their nominal rate ({:.0} of {:.0} \
         pkt/s, below {PUBLISHER_RATE_WARN_PCT} %): the load tester, not the server, set the \
         rate of this run",
        s.scenario, s.target, s.sent_pps, s.nominal_sent_pps
    ))
}

/// The revoke scenario's figures as text lines (part of [`table`]).
pub fn revoke_lines(r: &RevokeSummary) -> String {
    let mut out = String::new();
    let regrant = r
        .regrant_after_s
        .map_or(String::new(), |t| format!(", granted again at {t:.1} s"));
    let _ = writeln!(
        out,
        "revoke: send-video of {} ({}) revoked at {:.1} s{regrant}; grace {} ms; \
         stop_publishing received {} (ignored)",
        r.user_id, r.track_id, r.revoke_after_s, r.grace_ms, r.stop_publishing_received
    );
    let _ = writeln!(
        out,
        "  before the revoke: {:.1} media pkt/s of the track, all subscribers together",
        r.video_pps_before
    );
    let _ = writeln!(
        out,
        "  revoked window ({:.1} s): {} media pkts of the track received ({} RTP), \
         publisher sent {} video pkts; all tracks {:.1} media pkt/s",
        r.revoked_secs,
        r.revoked_video_media_packets,
        r.revoked_video_rtp_packets,
        r.publisher_video_sent,
        r.media_pps
    );
    let _ = writeln!(
        out,
        "  server datagrams out/s in it: {} = RTP {} (no media: {}, padding bit: {}) + RTCP {} + STUN {}",
        opt(r.datagrams_out_per_s, 1),
        opt(r.rtp_per_s, 1),
        opt(r.non_media_rtp_per_s, 1),
        opt(r.padded_rtp_per_s, 1),
        opt(r.rtcp_per_s, 1),
        opt(r.stun_per_s, 1),
    );
    if let Some(a) = r.video_pps_after_regrant {
        let _ = writeln!(out, "  after the re-grant: {a:.1} media pkt/s of the track");
    }
    if r.revoked_video_media_packets > 0 {
        let _ = writeln!(
            out,
            "WARNING: the server forwarded {} media packets of a revoked track after the grace",
            r.revoked_video_media_packets
        );
    }
    out
}

/// One markdown table: a header row of `columns`, its separator, then one line per row of
/// `rows` (its cells in the order of `columns`).
fn markdown_table(columns: &[&str], rows: impl IntoIterator<Item = Vec<String>>) -> String {
    let line = |cells: &[String]| format!("| {} |\n", cells.join(" | "));
    let header: Vec<String> = columns.iter().map(|c| (*c).to_owned()).collect();
    let mut out = line(&header);
    out.push_str(&format!("|{}\n", "---|".repeat(columns.len())));
    for row in rows {
        out.push_str(&line(&row));
    }
    out
}

/// The columns of [`markdown`]'s revoke table.
const REVOKE_COLUMNS: [&str; 10] = [
    "scenario",
    "revoked at / re-granted at (s)",
    "video pkt/s before (all receivers)",
    "revoked window (s)",
    "media pkts of the revoked track in it",
    "publisher's video pkts sent in it",
    "all media pkt/s in it",
    "server datagrams out/s in it",
    "RTP without media / padded / RTCP / STUN per s",
    "video pkt/s after re-grant (all receivers)",
];

/// The revoke rows of [`markdown`], if any run had one.
fn revoke_markdown(summaries: &[&Summary]) -> String {
    let rows: Vec<Vec<String>> = summaries
        .iter()
        .filter_map(|s| s.revoke.as_ref().map(|r| (*s, r)))
        .map(|(s, r): (&Summary, &RevokeSummary)| {
            vec![
                s.scenario.clone(),
                slash([
                    format!("{:.1}", r.revoke_after_s),
                    opt(r.regrant_after_s, 1),
                ]),
                format!("{:.1}", r.video_pps_before),
                format!("{:.1}", r.revoked_secs),
                r.revoked_video_media_packets.to_string(),
                r.publisher_video_sent.to_string(),
                format!("{:.1}", r.media_pps),
                opt(r.datagrams_out_per_s, 1),
                slash([
                    opt(r.non_media_rtp_per_s, 1),
                    opt(r.padded_rtp_per_s, 1),
                    opt(r.rtcp_per_s, 1),
                    opt(r.stun_per_s, 1),
                ]),
                opt(r.video_pps_after_regrant, 1),
            ]
        })
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    format!("\n{}", markdown_table(&REVOKE_COLUMNS, rows))
}

/// The memory per listener with its basis: `265` (per listener), or `310 / participant` for a
/// scenario without listeners; with `--settle`, the figure after it follows: `265, 35 s
/// later 120`.
fn kib_per_listener(s: &Summary) -> String {
    let v = opt(s.server_kib_per_listener, 0);
    let v = if s.memory_per == "participant" && s.server_kib_per_listener.is_some() {
        format!("{v} / participant")
    } else {
        v
    };
    match s.settle_secs {
        Some(secs) => format!(
            "{v}, {secs:.0} s later {}",
            opt(s.server_kib_per_listener_settled, 0)
        ),
        None => v,
    }
}

/// The columns of [`markdown`]'s table.
const MARKDOWN_COLUMNS: [&str; 15] = [
    "scenario",
    "server",
    "joined / failed",
    "fwd pkt/s (expected)",
    "loss %",
    "latency p50 / p99 (ms)",
    "server CPU (% core)",
    "server µs CPU / fwd pkt",
    "floor ns/pkt",
    "CPU / floor",
    "Janus ÷ Greenroom CPU/pkt",
    "server KiB per listener",
    "datagrams out / media pkt",
    "tester CPU (% core)",
    "publishers' rate (% of nominal)",
];

/// Runs as one markdown table, one row per run, in the given order (Greenroom then Janus for
/// each scenario). The Janus ÷ Greenroom column divides a Janus run's server CPU per forwarded
/// packet by that of the Greenroom run of the same scenario name; `-` elsewhere.
pub fn markdown(summaries: &[&Summary]) -> String {
    let rows = summaries.iter().map(|s| {
        let ratio = (s.target == "janus")
            .then(|| {
                summaries
                    .iter()
                    .find(|g| g.target == "greenroom" && g.scenario == s.scenario)
                    .and_then(|g| g.server_cpu_s_per_mpkt)
                    .filter(|g| *g > 0.0)
                    .zip(s.server_cpu_s_per_mpkt)
                    .map(|(g, j)| j / g)
            })
            .flatten();
        vec![
            s.scenario.clone(),
            s.target.clone(),
            slash([s.joined.to_string(), s.join_failures.to_string()]),
            paren(
                format!("{:.0}", s.forwarded_pps),
                format!("{:.0}", s.expected_pps),
            ),
            format!("{:.2}", s.loss_pct),
            slash([opt(s.latency_p50_ms, 2), opt(s.latency_p99_ms, 2)]),
            opt(s.server_cpu_pct, 1),
            opt(s.server_cpu_s_per_mpkt, 2),
            opt(s.floor_ns_per_packet, 0),
            s.server_cpu_x_floor
                .map_or("-".into(), |x| format!("{x:.1}x")),
            ratio.map_or("-".into(), |r| format!("{r:.2}x")),
            kib_per_listener(s),
            opt(s.datagrams_per_media_packet, 3),
            format!("{:.0}", s.bot_cpu_pct),
            publisher_rate(s),
        ]
    });
    let mut out = markdown_table(&MARKDOWN_COLUMNS, rows);
    out.push_str(&revoke_markdown(summaries));
    let warnings: Vec<String> = summaries
        .iter()
        .filter_map(|s| publisher_rate_warning(s))
        .collect();
    if !warnings.is_empty() {
        out.push('\n');
        for w in warnings {
            let _ = writeln!(out, "**{w}**");
        }
    }
    out
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// One series of a chart.
struct Series<'a> {
    name: &'a str,
    color: &'a str,
    points: Vec<(f64, f64)>,
}

/// An SVG line chart of `series` against time (s).
fn chart(title: &str, unit: &str, series: &[Series<'_>]) -> String {
    let (w, h, l, r, t, b) = (720.0, 220.0, 60.0, 10.0, 24.0, 28.0);
    let all = series.iter().flat_map(|s| s.points.iter());
    let xmax = all.clone().map(|p| p.0).fold(1.0f64, f64::max);
    let ymax = all.map(|p| p.1).fold(0.0f64, f64::max);
    let ymax = if ymax <= 0.0 { 1.0 } else { ymax * 1.1 };
    let x = |v: f64| l + (w - l - r) * v / xmax;
    let y = |v: f64| t + (h - t - b) * (1.0 - v / ymax);
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="11">"#
    );
    let _ = write!(
        svg,
        r#"<text x="{l}" y="14" font-size="13" font-weight="bold">{} ({})</text>"#,
        esc(title),
        esc(unit)
    );
    for i in 0..=4 {
        let v = ymax * f64::from(i) / 4.0;
        let _ = write!(
            svg,
            r##"<line x1="{l}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            w - r,
            l - 4.0,
            y(v) + 4.0,
            if ymax >= 100.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.2}")
            },
            y = y(v)
        );
    }
    for i in 0..=5 {
        let v = xmax * f64::from(i) / 5.0;
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{v:.0}s</text>"#,
            x(v),
            h - 8.0
        );
    }
    for (i, s) in series.iter().enumerate() {
        if s.points.is_empty() {
            continue;
        }
        let pts: Vec<String> = s
            .points
            .iter()
            .map(|(a, b)| format!("{:.1},{:.1}", x(*a), y(*b)))
            .collect();
        let _ = write!(
            svg,
            r#"<polyline fill="none" stroke="{}" stroke-width="1.8" points="{}"/>"#,
            s.color,
            pts.join(" ")
        );
        let _ = write!(
            svg,
            r#"<text x="{}" y="14" fill="{}" text-anchor="end">{}</text>"#,
            w - r - 110.0 * i as f64,
            s.color,
            esc(s.name)
        );
    }
    svg.push_str("</svg>");
    svg
}

fn series<'a>(
    name: &'a str,
    color: &'a str,
    samples: &[Sample],
    f: impl Fn(&Sample) -> Option<f64>,
) -> Series<'a> {
    Series {
        name,
        color,
        points: samples
            .iter()
            .filter_map(|s| f(s).map(|v| (s.t, v)))
            .collect(),
    }
}

/// A self-contained HTML page for one or more runs.
pub fn html(results: &[RunResult]) -> String {
    let mut out = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>greenroom-loadtest report</title>\
         <style>body{font-family:sans-serif;margin:24px;max-width:960px}table{border-collapse:collapse}\
         td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}h2{margin-top:32px}</style>\
         </head><body><h1>greenroom-loadtest report</h1>",
    );
    for r in results {
        let s = &r.summary;
        let _ = write!(
            out,
            "<h2>{} on {}</h2><table>",
            esc(&s.scenario),
            esc(&s.target)
        );
        for (k, v) in rows(s) {
            let _ = write!(out, "<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(&v));
        }
        out.push_str("</table>");
        if let Some(c) = &r.capacity {
            let _ = write!(
                out,
                "<h3>find-max: {} subscribers</h3><p>{}</p><table><tr><th>subscribers</th><th>pkt/s</th><th>loss %</th><th>p99 ms</th><th>server CPU %</th><th>bots CPU %</th><th>ok</th></tr>",
                c.max_subscribers,
                esc(&c.stopped_because)
            );
            for st in &c.steps {
                let _ = write!(
                    out,
                    "<tr><td>{}</td><td>{:.0}</td><td>{:.3}</td><td>{}</td><td>{}</td><td>{:.0}</td><td>{}</td></tr>",
                    st.subscribers,
                    st.forwarded_pps,
                    st.loss_pct,
                    opt(st.p99_ms, 2),
                    opt(st.server_cpu_pct, 0),
                    st.bot_cpu_pct,
                    st.ok
                );
            }
            out.push_str("</table>");
        }
        let sm = &r.samples;
        out.push_str(&chart(
            "throughput",
            "packets/s",
            &[
                series("forwarded", "#1f77b4", sm, |s| Some(s.rx_pps)),
                series("sent", "#2ca02c", sm, |s| Some(s.tx_pps)),
            ],
        ));
        out.push_str(&chart(
            "loss",
            "%",
            &[series("loss", "#d62728", sm, |s| Some(s.loss_pct))],
        ));
        out.push_str(&chart(
            "one-way latency",
            "ms",
            &[
                series("p50", "#1f77b4", sm, |s| s.p50_ms),
                series("p99", "#ff7f0e", sm, |s| s.p99_ms),
            ],
        ));
        out.push_str(&chart(
            "CPU",
            "% of one core",
            &[
                series("server", "#9467bd", sm, |s| s.server_cpu_pct),
                series("load tester", "#8c564b", sm, |s| Some(s.bot_cpu_pct)),
            ],
        ));
        out.push_str(&chart(
            "participants",
            "count",
            &[series("joined", "#17becf", sm, |s| Some(s.joined as f64))],
        ));
    }
    out.push_str("</body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_is_self_contained_and_escaped() {
        let mut r = RunResult::default();
        r.summary.scenario = "<x>".into();
        r.summary.target = "janus".into();
        r.samples = (0..5)
            .map(|i| Sample {
                t: f64::from(i),
                rx_pps: 100.0 * f64::from(i),
                p99_ms: Some(1.5),
                ..Sample::default()
            })
            .collect();
        let page = html(&[r]);
        assert!(page.contains("&lt;x&gt;"));
        assert!(!page.contains("<x>"));
        assert!(page.contains("<polyline"));
        assert!(!page.contains("<script src"));
        assert!(!page.contains("https://"));
    }

    #[test]
    fn tables_have_every_row() {
        let s = Summary {
            target: "greenroom".into(),
            loss_pct: 0.5,
            ..Summary::default()
        };
        let t = table(&s);
        assert!(t.contains("loss (%)"));
        assert!(t.contains("0.500"));
        assert!(t.contains("video layers q / h / f (pkts)"));
        // Figures without a value show as "-", several in one cell with " / " between them.
        let line = |label: &str| t.lines().find(|l| l.starts_with(label)).unwrap_or("");
        assert!(line("latency p50 ").ends_with("  - / - / -"), "{t}");
        assert!(line("floor ns/pkt ").ends_with("  - (-)"), "{t}");
        assert!(t.contains("bots"));
        let sbs = side_by_side(&[&s, &s]);
        assert_eq!(sbs.lines().count(), rows(&s).len());
    }

    #[test]
    fn markdown_rows_and_the_janus_ratio() {
        let g = Summary {
            target: "greenroom".into(),
            scenario: "audio-1x200".into(),
            server_cpu_s_per_mpkt: Some(10.0),
            server_cpu_x_floor: Some(11.5),
            server_kib_per_listener: Some(64.4),
            memory_per: "listener".into(),
            ..Summary::default()
        };
        let j = Summary {
            target: "janus".into(),
            server_cpu_s_per_mpkt: Some(45.0),
            ..g.clone()
        };
        let other = Summary {
            target: "janus".into(),
            scenario: "meeting-4x4".into(),
            server_cpu_s_per_mpkt: Some(45.0),
            server_kib_per_listener: Some(300.0),
            memory_per: "participant".into(),
            ..Summary::default()
        };
        let t = markdown(&[&g, &j, &other]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 5, "{t}");
        let cols = |l: &str| l.matches('|').count();
        assert!(lines.iter().all(|l| cols(l) == cols(lines[0])), "{t}");
        assert!(
            lines[2].contains("| 11.5x |") && lines[2].contains("| 64 |"),
            "{t}"
        );
        assert!(lines[3].contains("| 4.50x |"), "{t}");
        // No Greenroom run of the meeting: no ratio.
        assert!(
            lines[4].contains("| - |") && lines[4].contains("300 / participant"),
            "{t}"
        );
    }

    #[test]
    fn markdown_tables_have_a_header_a_separator_and_a_row_per_run() {
        let t = markdown_table(&["a", "b c"], [vec!["1".into(), "2 / 3".into()]]);
        assert_eq!(t, "| a | b c |\n|---|---|\n| 1 | 2 / 3 |\n");
        let md = markdown(&[&Summary::default()]);
        assert!(
            md.starts_with(
                "| scenario | server | joined / failed | fwd pkt/s (expected) | loss % | \
                 latency p50 / p99 (ms) |"
            ),
            "{md}"
        );
        assert_eq!(
            md.lines().nth(1),
            Some("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        );
    }

    #[test]
    fn revoke_figures_are_printed_and_a_leak_is_flagged() {
        let r = RevokeSummary {
            user_id: "bot-0".into(),
            track_id: "p1:camera".into(),
            revoke_after_s: 1.5,
            regrant_after_s: Some(4.0),
            video_pps_before: 32.0,
            revoked_secs: 2.0,
            publisher_video_sent: 64,
            datagrams_out_per_s: Some(120.0),
            video_pps_after_regrant: Some(31.0),
            ..RevokeSummary::default()
        };
        let mut s = Summary {
            target: "greenroom".into(),
            scenario: "revoke".into(),
            revoke: Some(r),
            ..Summary::default()
        };
        let t = table(&s);
        assert!(
            t.contains("revoked at 1.5 s, granted again at 4.0 s"),
            "{t}"
        );
        assert!(t.contains("0 media pkts of the track received"), "{t}");
        assert!(t.contains("after the re-grant: 31.0"), "{t}");
        assert!(!t.contains("WARNING"), "{t}");
        let md = markdown(&[&s]);
        assert!(
            md.contains("| revoke | 1.5 / 4.0 | 32.0 | 2.0 | 0 | 64 |"),
            "{md}"
        );
        if let Some(r) = s.revoke.as_mut() {
            r.revoked_video_media_packets = 3;
        }
        assert!(table(&s).contains("WARNING: the server forwarded 3 media packets"));
    }

    #[test]
    fn a_publisher_below_its_nominal_rate_is_flagged() {
        let ok = Summary {
            target: "greenroom".into(),
            scenario: "a".into(),
            sent_pps: 499.0,
            nominal_sent_pps: 500.0,
            publisher_rate_pct: Some(99.8),
            ..Summary::default()
        };
        let slow = Summary {
            scenario: "b".into(),
            sent_pps: 250.0,
            publisher_rate_pct: Some(50.0),
            ..ok.clone()
        };
        assert!(publisher_rate_warning(&ok).is_none());
        assert!(!table(&ok).contains("WARNING"));
        assert!(table(&ok).contains("499 (500): 99.8 %"));
        let t = table(&slow);
        assert!(t.contains("WARNING: b on greenroom"), "{t}");
        assert!(t.contains("50.0 % LOW"), "{t}");
        let md = markdown(&[&ok, &slow]);
        assert!(
            md.contains("| 99.8 % |") && md.contains("| 50.0 % LOW |"),
            "{md}"
        );
        assert_eq!(md.matches("**WARNING").count(), 1, "{md}");
    }

    #[test]
    fn the_settled_memory_follows_the_end_of_window_figure() {
        let s = Summary {
            server_kib_per_listener: Some(173.2),
            memory_per: "listener".into(),
            ..Summary::default()
        };
        assert_eq!(kib_per_listener(&s), "173");
        let settled = Summary {
            settle_secs: Some(35.0),
            server_kib_per_listener_settled: Some(120.4),
            ..s
        };
        assert_eq!(kib_per_listener(&settled), "173, 35 s later 120");
    }
}
