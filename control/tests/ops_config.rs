//! Configuration precedence through the real `greenroom` binary: embedded defaults < TOML file <
//! `GREENROOM_SECTION__KEY` environment (and the documented aliases) < command-line flags, errors
//! that name the unknown key or the bad variable, and `config check` redacting secrets.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod ops_support;

use std::process::Output;

use greenroom_control::config::{Config, REDACTED};
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

    // Defaults alone (the secret is printed redacted).
    let out = command().args(["config", "check"]).output().unwrap();
    let c = effective(&out);
    let mut expected = Config::default();
    expected.keys.api_secret = REDACTED.to_owned();
    assert_eq!(c, expected);

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

    // Every key by the one rule, nested tables included; the rule wins over an alias.
    let c = effective(&check(
        &file,
        &[
            ("GREENROOM_LIMITS__IDLE_WS_SECS", "17"),
            ("GREENROOM_SERVER__TLS__CERT_PATH", "/c.pem"),
            ("GREENROOM_SERVER__TLS__KEY_PATH", "/k.pem"),
            (
                "GREENROOM_WEBHOOKS__URLS",
                "[\"http://h/1\", \"http://h/2\"]",
            ),
            ("GREENROOM_DRAIN_SECS", "3"),
            ("GREENROOM_SERVER__DRAIN_SECS", "4"),
            ("GREENROOM_REDIS_URL", "redis://:hunter2@r:6379/0"),
        ],
    ));
    assert_eq!(c.limits.idle_ws_secs, 17);
    assert_eq!(c.server.tls.unwrap().key_path.to_string_lossy(), "/k.pem");
    assert_eq!(c.webhooks.urls.len(), 2);
    assert_eq!(c.server.drain_secs, 4);
    let cluster = c
        .cluster
        .expect("GREENROOM_REDIS_URL turns cluster mode on");
    assert_eq!(cluster.redis_url, format!("redis://:{REDACTED}@r:6379/0"));

    // Flags over the environment, shown by `config check`; secrets never printed.
    let out = command()
        .arg("--config")
        .arg(&file)
        .env("GREENROOM_HTTP_ADDR", "127.0.0.1:9002")
        .env("GREENROOM_API_SECRET", "s3cr3t-value")
        .args([
            "config",
            "check",
            "--http-addr",
            "127.0.0.1:9003",
            "--set",
            "limits.signal_burst=7",
        ])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).contains("s3cr3t-value"));
    let c = effective(&out);
    assert_eq!(c.server.http_addr.to_string(), "127.0.0.1:9003");
    assert_eq!(c.limits.signal_burst, 7);

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
    // So does a mistyped or badly valued variable of the rule.
    for (var, value) in [
        ("GREENROOM_LIMITS__IDLE_WS_SEC", "3"),
        ("GREENROOM_LIMITS__IDLE_WS_SECS", "soon"),
    ] {
        let out = check(&file, &[(var, value)]);
        assert!(!out.status.success(), "accepted {var}={value}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(var), "{err}");
    }
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
