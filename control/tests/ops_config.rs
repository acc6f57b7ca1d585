//! Configuration precedence through the real `greenroom` binary: embedded defaults < TOML file <
//! `GREENROOM_*` environment < command-line flags, and errors that name the unknown key or the
//! bad variable.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod ops_support;

use std::process::Output;

use greenroom_control::config::Config;
use ops_support::{command, free_tcp, free_udp, temp_dir, wait_ready, Server};

fn check(file: &std::path::Path, env: &[(&str, &str)]) -> Output {
    let mut c = command();
    c.arg("--config").arg(file).args(["config", "check"]);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn effective(out: &Output) -> Config {
    assert!(
        out.status.success(),
        "config check failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    toml::from_str(&String::from_utf8_lossy(&out.stdout)).unwrap()
}

#[test]
fn file_then_env_override_defaults_in_order() {
    let dir = temp_dir("cfg");
    let file = dir.join("greenroom.toml");
    std::fs::write(
        &file,
        "[server]\nhttp_addr = \"127.0.0.1:9001\"\ndrain_secs = 7\n[rtc]\nnode_ip = \"10.1.2.3\"\n",
    )
    .unwrap();

    // Defaults alone.
    let out = command().args(["config", "check"]).output().unwrap();
    let c = effective(&out);
    assert_eq!(c, Config::default());

    // File over defaults.
    let c = effective(&check(&file, &[]));
    assert_eq!(c.server.http_addr.to_string(), "127.0.0.1:9001");
    assert_eq!(c.server.drain_secs, 7);
    assert_eq!(c.rtc.node_ip.to_string(), "10.1.2.3");
    assert_eq!(c.rtc.udp_addr, Config::default().rtc.udp_addr);

    // Environment over the file, for that key only.
    let c = effective(&check(
        &file,
        &[
            ("GREENROOM_HTTP_ADDR", "127.0.0.1:9002"),
            ("GREENROOM_DRAIN_SECS", "3"),
        ],
    ));
    assert_eq!(c.server.http_addr.to_string(), "127.0.0.1:9002");
    assert_eq!(c.server.drain_secs, 3);
    assert_eq!(c.rtc.node_ip.to_string(), "10.1.2.3");

    // The file can come from GREENROOM_CONFIG too.
    let out = command()
        .env("GREENROOM_CONFIG", &file)
        .args(["config", "check"])
        .output()
        .unwrap();
    assert_eq!(effective(&out).server.drain_secs, 7);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn unknown_keys_and_bad_values_fail_naming_them() {
    let dir = temp_dir("cfg-bad");
    let file = dir.join("bad.toml");
    for (text, needle) in [
        ("[server]\nhttp_adr = \"127.0.0.1:9001\"\n", "http_adr"),
        ("[bogus_section]\nx = 1\n", "bogus_section"),
        (
            "[rtc]\nudp_addr = \"127.0.0.1:7882\"\nnode_ipp = \"1.2.3.4\"\n",
            "node_ipp",
        ),
        ("[server]\ndrain_secs = \"ten\"\n", "drain_secs"),
    ] {
        std::fs::write(&file, text).unwrap();
        let out = check(&file, &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "accepted {text:?}");
        assert!(
            err.contains(needle),
            "error for {text:?} does not name {needle}: {err}"
        );
        assert!(
            out.stdout.is_empty(),
            "printed a configuration for {text:?}"
        );
    }
    // A bad environment value names the variable.
    std::fs::write(&file, "").unwrap();
    let out = check(&file, &[("GREENROOM_UDP_ADDR", "not-an-address")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("GREENROOM_UDP_ADDR"), "{err}");
    // A missing file is an error, not the defaults.
    let out = check(&dir.join("missing.toml"), &[]);
    assert!(!out.status.success());
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn flags_override_env_and_file_when_serving() {
    let dir = temp_dir("cfg-serve");
    let (file_addr, env_addr, flag_addr) = (free_tcp(), free_tcp(), free_tcp());
    let file = dir.join("greenroom.toml");
    std::fs::write(
        &file,
        format!(
            "[server]\nhttp_addr = \"{file_addr}\"\n[rtc]\nudp_addr = \"{}\"\n",
            free_udp()
        ),
    )
    .unwrap();
    let mut cmd = command();
    cmd.arg("--config")
        .arg(&file)
        .env("GREENROOM_HTTP_ADDR", env_addr.to_string())
        .args(["serve", "--http-addr", &flag_addr.to_string()]);
    let mut server = Server::spawn(&mut cmd, flag_addr, &dir);
    let client = reqwest::Client::new();
    wait_ready(&mut server, &client, &format!("http://{flag_addr}/healthz")).await;
    for other in [file_addr, env_addr] {
        assert!(
            client
                .get(format!("http://{other}/healthz"))
                .send()
                .await
                .is_err(),
            "something answers on {other}"
        );
    }
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}
