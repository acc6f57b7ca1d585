//! The `greenroom` binary: `serve` (the default), `token`, `config check`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use greenroom_control::config::{Config, Overrides, DEV_API_KEY, DEV_API_SECRET};
use greenroom_proto::{CallCid, Role};

/// jemalloc with background purge threads: with glibc's malloc the server's RSS stayed at its
/// peak after the DTLS release (freed memory kept in per-thread arenas); jemalloc returns it
/// to the system (docs/BENCHMARKS.md, *The allocator*: one loaded run showed 197 vs 121 KiB of
/// RSS per audio listener; a like-for-like run did not reproduce it).
#[cfg(all(unix, feature = "jemalloc"))]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, compiled in (jemalloc reads this symbol at its first allocation; the
/// `_RJEM_MALLOC_CONF` environment variable still overrides it). `tcache_max:1024`: a thread
/// caches freed blocks of at most 1 KiB instead of 32 KiB. The control plane's threads handle a
/// join burst and then sit idle with full caches of larger blocks that no other thread can use:
/// measured 74-75 -> 69-70 KiB of RSS per listener in a 1 x 200 audio room, with no change in
/// CPU per packet (docs/BENCHMARKS.md, *Memory per audio listener, fifth pass*).
// SAFETY (the attribute below): jemalloc declares `malloc_conf` weak so that the program may
// define it; this is that one definition, a pointer to a NUL-terminated 'static string, the
// type jemalloc reads.
#[cfg(all(unix, feature = "jemalloc"))]
#[allow(unsafe_code)]
#[export_name = "_rjem_malloc_conf"]
#[used]
static MALLOC_CONF: JemallocConf = JemallocConf(c"tcache_max:1024".as_ptr());

/// A C string pointer that can live in a `static` (jemalloc's `const char *malloc_conf`).
#[cfg(all(unix, feature = "jemalloc"))]
#[repr(transparent)]
struct JemallocConf(*const std::ffi::c_char);

// SAFETY: the pointer is to a string literal ('static, immutable); sharing it between threads
// only ever reads it.
#[cfg(all(unix, feature = "jemalloc"))]
#[allow(unsafe_code)]
unsafe impl Sync for JemallocConf {}

/// Routes aws-lc's allocations (`OPENSSL_malloc`, `OPENSSL_realloc`, `OPENSSL_free`) to
/// jemalloc instead of glibc's malloc. aws-lc holds the SRTP ciphers (an `EVP_AEAD_CTX` per
/// direction and peer, alive as long as the peer); in glibc's arena they sat between OpenSSL's
/// short-lived DTLS handshake buffers and pinned the pages those left free, which
/// `malloc_trim` cannot return (docs/BENCHMARKS.md, *Memory per audio listener, fifth pass*).
/// Must run before aws-lc allocates anything (first thing in `main`): a block taken from glibc
/// must never reach jemalloc's `free`. aws-lc refuses a second call, so the worst a late call
/// can do is nothing.
#[cfg(all(unix, feature = "jemalloc"))]
fn aws_lc_on_jemalloc() {
    use std::ffi::{c_char, c_int, c_void};

    extern "C" fn lc_malloc(size: usize, _file: *const c_char, _line: c_int) -> *mut c_void {
        // SAFETY: jemalloc's `malloc` takes any size and returns null on failure, which aws-lc
        // checks.
        #[allow(unsafe_code)]
        unsafe {
            tikv_jemalloc_sys::malloc(size)
        }
    }
    extern "C" fn lc_realloc(
        ptr: *mut c_void,
        size: usize,
        file: *const c_char,
        line: c_int,
    ) -> *mut c_void {
        if ptr.is_null() {
            return lc_malloc(size, file, line);
        }
        // A new block, the contents copied, the old block wiped and freed (as aws-lc's own
        // realloc does, so that no key material is left behind in freed memory).
        let new = lc_malloc(size, file, line);
        if new.is_null() {
            return new;
        }
        // SAFETY: `ptr` is a live jemalloc block owned by aws-lc (every aws-lc block is
        // jemalloc's once these functions are installed before its first allocation); `new` is
        // a fresh block of at least `size` bytes; they do not overlap. At most the smaller of
        // the two sizes is copied.
        #[allow(unsafe_code)]
        unsafe {
            let old = tikv_jemalloc_sys::malloc_usable_size(ptr);
            std::ptr::copy_nonoverlapping(ptr.cast::<u8>(), new.cast::<u8>(), old.min(size));
        }
        lc_free(ptr, file, line);
        new
    }
    extern "C" fn lc_free(ptr: *mut c_void, _file: *const c_char, _line: c_int) {
        if ptr.is_null() {
            return;
        }
        // SAFETY: as in `lc_realloc`, `ptr` is a live jemalloc block owned by aws-lc, which
        // frees it once. Its usable size is what jemalloc reserved for it, all writable; it is
        // wiped (aws-lc's own `OPENSSL_free` wipes key material too, but not when these
        // functions replace it) and then freed.
        #[allow(unsafe_code)]
        unsafe {
            let len = tikv_jemalloc_sys::malloc_usable_size(ptr);
            let bytes = ptr.cast::<u8>();
            for i in 0..len {
                // Volatile, so that the wipe of a block about to be freed is not optimised out.
                bytes.add(i).write_volatile(0);
            }
            tikv_jemalloc_sys::free(ptr);
        }
    }
    // SAFETY: plain function pointers with the signatures aws-lc declares; called before any
    // other thread exists and before aws-lc's first allocation.
    #[allow(unsafe_code)]
    let installed = unsafe {
        aws_lc_sys::CRYPTO_set_mem_functions(Some(lc_malloc), Some(lc_realloc), Some(lc_free))
    };
    debug_assert_eq!(installed, 1, "aws-lc allocated before main");
}

/// How often the server checks whether glibc's malloc holds memory it could give back.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MALLOC_TRIM_EVERY: Duration = Duration::from_secs(5);
/// Free bytes in glibc's arenas above which the server returns them to the kernel.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MALLOC_TRIM_MIN_FREE: usize = 4 << 20;

/// Returns the memory glibc's malloc keeps free to the kernel, every [`MALLOC_TRIM_EVERY`]
/// when its arenas hold at least [`MALLOC_TRIM_MIN_FREE`] free bytes. The Rust heap is
/// jemalloc's, but OpenSSL (each peer's DTLS session, about 76 KiB while the handshake's
/// buffers live, dropped 30 s after connecting) and aws-lc allocate with glibc's malloc, which
/// kept that memory after the DTLS release: the RSS stayed at the join burst's peak
/// (docs/BENCHMARKS.md, *Where the RSS per listener goes*).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn spawn_malloc_trim() {
    let trim = move || loop {
        std::thread::sleep(MALLOC_TRIM_EVERY);
        // SAFETY: `mallinfo2` takes no arguments and only reads glibc's allocator state under
        // its arena locks.
        #[allow(unsafe_code)]
        let free = unsafe { nix::libc::mallinfo2() }.fordblks;
        if free >= MALLOC_TRIM_MIN_FREE {
            // SAFETY: `malloc_trim` takes a plain size and releases only free pages, under
            // glibc's arena locks; no pointer of ours is involved.
            #[allow(unsafe_code)]
            let released = unsafe { nix::libc::malloc_trim(0) };
            tracing::debug!(free, released, "malloc_trim");
        }
    };
    if let Err(e) = std::thread::Builder::new()
        .name("malloc-trim".into())
        .spawn(trim)
    {
        tracing::warn!(error = %e, "could not start the malloc_trim thread");
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "greenroom",
    version,
    about = "Greenroom: a selective forwarding media server with role permissions"
)]
struct Cli {
    /// Configuration file (TOML).
    #[arg(long, short, global = true, env = "GREENROOM_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server (the default).
    Serve(ServeArgs),
    /// Mint a token; prints the JWT alone on stdout.
    Token(TokenArgs),
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Validate the configuration (file, environment, flags) and print the effective values,
    /// secrets redacted.
    Check(ConfigFlags),
}

#[derive(Args, Debug, Default)]
struct ServeArgs {
    #[command(flatten)]
    flags: ConfigFlags,
    /// Serve HTTPS/WSS with a freshly generated self-signed certificate (LAN demos).
    #[arg(long)]
    dev_tls: bool,
}

/// Flags that set configuration keys: the last layer, over the file and the environment.
#[derive(Args, Debug, Default)]
struct ConfigFlags {
    /// HTTP and WebSocket address (server.http_addr).
    #[arg(long)]
    http_addr: Option<SocketAddr>,
    /// The UDP address of the media plane.
    #[arg(long)]
    udp_addr: Option<SocketAddr>,
    /// IP advertised to clients in ICE candidates (rtc.node_ip).
    #[arg(long)]
    node_ip: Option<IpAddr>,
    /// Seconds to drain connections on shutdown (server.drain_secs).
    #[arg(long)]
    drain_secs: Option<u64>,
    /// Directory of the server's files: the call history database (server.data_dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Redis URL: turns cluster mode on (cluster.redis_url).
    #[arg(long)]
    redis_url: Option<String>,
    /// This node's id in the cluster (cluster.node_id).
    #[arg(long)]
    node_id: Option<String>,
    /// Any key: `--set limits.idle_ws_secs=30` (repeatable; values read like TOML scalars).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

impl ConfigFlags {
    /// The flags as the configuration's last layer.
    fn overrides(&self) -> Result<Overrides> {
        let mut o = Overrides::new();
        if let Some(v) = &self.http_addr {
            o.set("--http-addr", "server.http_addr", v);
        }
        if let Some(v) = &self.udp_addr {
            o.set("--udp-addr", "rtc.udp_addr", v);
        }
        if let Some(v) = &self.node_ip {
            o.set("--node-ip", "rtc.node_ip", v);
        }
        if let Some(v) = &self.drain_secs {
            o.set("--drain-secs", "server.drain_secs", v);
        }
        if let Some(v) = &self.data_dir {
            o.set("--data-dir", "server.data_dir", v);
        }
        if let Some(v) = &self.redis_url {
            o.set("--redis-url", "cluster.redis_url", v);
        }
        if let Some(v) = &self.node_id {
            o.set("--node-id", "cluster.node_id", v);
        }
        for item in &self.set {
            o.parse_set(item)?;
        }
        Ok(o)
    }
}

#[derive(Args, Debug)]
struct TokenArgs {
    /// The user id (`sub`).
    #[arg(long)]
    user: String,
    /// Limit the token to one call, `type:id`.
    #[arg(long, conflicts_with = "session")]
    call: Option<CallCid>,
    /// Limit the token to the direct call `default:<session>` (a ringing session id).
    #[arg(long)]
    session: Option<String>,
    /// The global role.
    #[arg(long)]
    role: Option<Role>,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 6 * 3600)]
    ttl: u64,
    /// A server-side token with every capability.
    #[arg(long)]
    admin: bool,
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = std::env::var("GREENROOM_LOG_FORMAT").is_ok_and(|v| v == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> Result<()> {
    #[cfg(all(unix, feature = "jemalloc"))]
    aws_lc_on_jemalloc();
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Serve(ServeArgs::default()));
    let overrides = match &command {
        Command::Serve(a) => a.flags.overrides()?,
        Command::Config {
            command: ConfigCommand::Check(f),
        } => f.overrides()?,
        Command::Token(_) => Overrides::new(),
    };
    let config =
        Config::load_with(cli.config.as_deref(), &overrides).context("loading configuration")?;
    match command {
        Command::Token(t) => {
            let auth = greenroom_control::auth::Auth::from_config(&config.keys);
            let call = match &t.session {
                Some(id) => Some(
                    CallCid::new(greenroom_proto::CallType::Default, id)
                        .map_err(|e| anyhow::anyhow!("--session: {e}"))?,
                ),
                None => t.call,
            };
            let token = auth.mint(&t.user, call.as_ref(), t.role, t.admin, t.ttl)?;
            println!("{token}");
            Ok(())
        }
        Command::Config {
            command: ConfigCommand::Check(_),
        } => {
            let text = config
                .to_redacted_toml()
                .context("printing configuration")?;
            println!("{text}");
            if let Some(f) = &cli.config {
                eprintln!("file: {}", f.display());
            }
            for name in greenroom_control::config::env_in_use(std::env::vars()) {
                eprintln!("environment: {name}");
            }
            if !overrides.is_empty() {
                eprintln!("flags: {overrides:?}");
            }
            eprintln!("configuration OK");
            Ok(())
        }
        Command::Serve(args) => {
            init_tracing();
            #[cfg(all(target_os = "linux", target_env = "gnu"))]
            spawn_malloc_trim();
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the runtime")?;
            let result = runtime.block_on(serve(config, args));
            // Tasks still running (upgraded sockets, the media plane) are not waited for.
            runtime.shutdown_timeout(Duration::from_secs(1));
            result
        }
    }
}

async fn serve(mut config: Config, args: ServeArgs) -> Result<()> {
    greenroom_control::turn::nat::apply(&mut config)
        .await
        .context("discovering the public address ([nat] stun_server)")?;
    if config.uses_dev_secret() {
        tracing::warn!(
            api_key = DEV_API_KEY,
            api_secret = DEV_API_SECRET,
            "using the built-in development API key and secret: anyone can mint tokens; set keys.api_secret for production"
        );
        eprintln!("Development credentials: api_key={DEV_API_KEY} api_secret={DEV_API_SECRET}");
        eprintln!("Mint a token: cargo run --release -- token --user alice --role host");
    }
    let http_addr = config.server.http_addr;
    let mut opts = greenroom_control::server::ServeOptions::from_config(&config.server);
    opts.tls = if args.dev_tls {
        let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        names.push(config.rtc.node_ip.to_string());
        names.dedup();
        Some(greenroom_control::tls::dev_config(&names)?)
    } else if let Some(t) = &config.server.tls {
        Some(greenroom_control::tls::from_files(
            &t.cert_path,
            &t.key_path,
        )?)
    } else {
        None
    };
    match greenroom_control::server::raise_open_file_limit() {
        Some(n) => tracing::info!(open_files = n, "open-file limit"),
        None => tracing::warn!("the open-file limit is unknown"),
    }
    let drain = Duration::from_secs(config.server.drain_secs);
    let webhook_flush = Duration::from_secs(config.webhooks.flush_secs);
    let turn = match config.turn.enabled {
        true => Some(
            greenroom_control::turn::TurnListeners::bind(&mut config.turn, opts.tls.as_ref())
                .await?,
        ),
        false => None,
    };
    let state = greenroom_control::start_state(config, true)
        .await
        .context("starting the media plane")?;
    let cluster = if state.config.cluster.is_some() {
        let c = greenroom_control::cluster::Cluster::start(&state)
            .await
            .context("joining the cluster (Redis)")?;
        Some(c)
    } else {
        None
    };
    let udp = state.sfu.as_ref().map(|s| s.local_addr());
    let turn = match (turn, udp) {
        (Some(l), Some(media)) => {
            let settings = greenroom_control::turn::TurnSettings::from_config(&state.config, media);
            tracing::info!(turn = ?state.config.turn.transports, "embedded TURN server listening");
            Some(greenroom_control::turn::TurnServer::start(l, settings).await?)
        }
        _ => None,
    };
    let app = greenroom_control::app(state.clone());
    let listener = tokio::net::TcpListener::bind(http_addr)
        .await
        .with_context(|| format!("binding {http_addr}"))?;
    let scheme = if opts.tls.is_some() { "https" } else { "http" };
    tracing::info!(%scheme, http = %http_addr, udp = ?udp, "greenroom listening");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(greenroom_control::server::serve(
        listener,
        app,
        opts,
        async move {
            let _ = stop_rx.await;
        },
    ));

    // Shutdown, in order (docs/ARCHITECTURE.md, Operations):
    shutdown_signal().await;
    // 1. Draining: joins and new calls are refused, /healthz answers 503 `draining`, every
    //    joined client gets `going_away` with the drain time.
    tracing::info!(
        drain_secs = drain.as_secs(),
        "shutting down: draining connections"
    );
    state.begin_shutdown(drain.as_millis() as u64);
    //    In cluster mode the node is marked draining: no new call is placed here.
    if let Some(c) = &cluster {
        c.drain(&state).await;
    }
    // 2. Wait for the clients to leave, at most the drain time.
    let deadline = tokio::time::Instant::now() + drain;
    while state.session_count() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // 3. Stop accepting connections; open HTTP requests finish.
    let _ = stop_tx.send(());
    // 4. Close the remaining WebSockets (1001 going away) and let their writers flush.
    state.close_all("server shutting down");
    let closed_by = tokio::time::Instant::now() + Duration::from_secs(2);
    while state.session_count() > 0 && tokio::time::Instant::now() < closed_by {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if let Some(t) = turn {
        t.close().await;
    }
    // 5. Calls still ringing (or in progress) get their final history record.
    state.ringing.shutdown(&state);
    // 6. Flush the webhook queue (bounded) and the history writer.
    if let Some(w) = &state.webhooks {
        w.flush(webhook_flush).await;
    }
    if !state.ringing.flush_history(Duration::from_secs(5)).await {
        tracing::warn!("call history not flushed before exit");
    }
    if let Err(e) = server.await {
        tracing::warn!("HTTP server task: {e}");
    }
    if let Some(c) = &cluster {
        c.deregister().await;
    }
    tracing::info!("drained, exiting");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
