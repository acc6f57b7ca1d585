//! Helpers shared by the `ops_*` tests: free ports, the real `greenroom` binary as a child
//! process (killed on drop), bounded polling, temp files and tokens.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use greenroom_control::auth::Auth;
use greenroom_control::config::{DEV_API_KEY, DEV_API_SECRET};
use greenroom_proto::Role;

/// The real binary built by cargo for this test run.
pub const BIN: &str = env!("CARGO_BIN_EXE_greenroom");

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_tcp() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A UDP port on 127.0.0.1 that was free a moment ago.
pub fn free_udp() -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap()
}

/// A fresh private directory under the system temp dir.
pub fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "greenroom-ops-{}-{name}-{}",
        std::process::id(),
        uuid::Uuid::new_v4()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `greenroom` with a clean environment (no inherited `GREENROOM_*` or `RUST_LOG`).
pub fn command() -> Command {
    let mut c = Command::new(BIN);
    c.env_clear();
    if let Some(path) = std::env::var_os("PATH") {
        c.env("PATH", path);
    }
    c.env("RUST_LOG", "info");
    c
}

/// A token for the development keys the binary uses by default.
pub fn token(user: &str, role: Role) -> String {
    Auth::new(DEV_API_KEY, DEV_API_SECRET)
        .mint(user, None, Some(role), false, 600)
        .unwrap()
}

/// A running `greenroom serve`; killed when dropped (if still running).
pub struct Server {
    pub child: Child,
    pub http: SocketAddr,
    pub log: PathBuf,
}

impl Server {
    /// Spawns `greenroom <args>` with stdout and stderr going to a log file.
    pub fn spawn(cmd: &mut Command, http: SocketAddr, dir: &Path) -> Server {
        let log = dir.join("server.log");
        let f = std::fs::File::create(&log).unwrap();
        let child = cmd
            .stdout(Stdio::from(f.try_clone().unwrap()))
            .stderr(Stdio::from(f))
            .spawn()
            .unwrap();
        Server { child, http, log }
    }

    /// The server's output so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (bounded) for the process to exit.
    pub fn wait_exit(&mut self, within: Duration) -> Option<(ExitStatus, Duration)> {
        let start = Instant::now();
        while start.elapsed() < within {
            if let Some(st) = self.child.try_wait().unwrap() {
                return Some((st, start.elapsed()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Polls `url` until it answers 200 (bounded); panics with the server log otherwise.
pub async fn wait_ready(server: &mut Server, client: &reqwest::Client, url: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = client.get(url).send().await {
            if r.status().is_success() {
                return;
            }
        }
        if let Some(st) = server.child.try_wait().unwrap() {
            panic!("server exited early with {st}:\n{}", server.log());
        }
        assert!(
            Instant::now() < deadline,
            "server not ready at {url}:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
