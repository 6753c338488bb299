//! `cargo xtask pgo`: weir's production build, optimised with a profile of its own traffic
//! (profile-guided optimisation). An instrumented build of weir (`--profile pgo-gen`) serves
//! the training traffic below; `llvm-profdata` merges what it counted; the `dist` build is then
//! compiled with that profile, into `target/pgo/weir`.
//!
//! The training traffic is what the profile teaches the compiler is hot, so it covers what a
//! production weir does, against an origin in this process: HTTP/1.1 keep-alive requests of
//! 1 KiB and 64 KiB, request bodies, the key-auth → headers and jwt-auth → rate-limit →
//! rewrite plugin chains, compressed responses, an HTTP/2 upstream, HTTP/2 clients, TLS with
//! HTTP/1.1 and HTTP/2, new TLS handshakes, and the admin listener's metrics. weir serves it
//! twice: on one worker thread without an access log (`bench/run.sh`'s shape), and on the
//! default worker threads with a JSON access log, so both schedulers and both log settings
//! are in the profile. Every response must be a success: training traffic that failed would
//! teach the compiler that error paths are hot.
//!
//! `cargo xtask pgo --train WEIR` sends a small share of the same traffic to the weir binary
//! WEIR (building only the bundled plugins it loads): CI runs it on the debug build so the
//! training cannot rot.
//!
//! The compiler flags go to cargo as `CARGO_ENCODED_RUSTFLAGS` (the caller's
//! `CARGO_ENCODED_RUSTFLAGS` or `RUSTFLAGS` first), which, as `RUSTFLAGS` would, makes cargo
//! ignore `rustflags` in cargo's config files for these two builds.

use std::hash::{Hash as _, Hasher as _};
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::{cargo_with, plugins, root, target_dir};

/// The most one run of the training traffic may take (it takes seconds).
const TRAFFIC_TIMEOUT: Duration = Duration::from_secs(600);

/// The plugins the training routes run.
const PLUGINS: [&str; 5] = ["key-auth", "headers", "jwt-auth", "rate-limit", "rewrite"];

/// A response body of the origin: 1 KiB, or 64 KiB for a path ending in `big`.
static BODY: [u8; 65536] = [b'x'; 65536];

pub(crate) fn run(args: &[String]) -> anyhow::Result<()> {
    match args {
        [] => build(),
        [flag, weir] if flag == "--train" => train(Path::new(weir), &plugins()?, Share::SMOKE),
        _ => bail!("usage: cargo xtask pgo [--train WEIR]"),
    }
}

/// A small share of the training traffic against the debug build (CI, in `cargo xtask test`):
/// every phase still gets its 200s from the weir of this commit.
pub(crate) fn smoke() -> anyhow::Result<()> {
    train(&target_dir().join("debug/weir"), &plugins()?, Share::SMOKE)
}

/// The instrumented build, the training, the merge, and the optimised build.
fn build() -> anyhow::Result<()> {
    let rustc = Rustc::read()?;
    let profdata = rustc.llvm_profdata()?;
    let plugins = plugins()?;
    let dir = target_dir().join("pgo");
    let raw = dir.join("raw");
    // Counts from an earlier build's run would not match this one's code.
    let _ = std::fs::remove_dir_all(&raw);
    std::fs::create_dir_all(&raw).with_context(|| format!("cannot create {}", raw.display()))?;
    // `--target` keeps RUSTFLAGS off build scripts and procedural macros, and these builds'
    // output apart from the usual `target/dist/`.
    let target = ["-p", "weir-host", "--target", &rustc.host];
    cargo_with(
        &[&["build", "--profile", "pgo-gen"][..], &target].concat(),
        &rustflags(&format!("-Cprofile-generate={}", raw.display())),
    )?;
    let instrumented = target_dir().join(&rustc.host).join("pgo-gen/weir");
    train(&instrumented, &plugins, Share::FULL)?;

    // One profile at a time: an earlier build's is never read again.
    for entry in std::fs::read_dir(&dir)?.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("weir-") && name.ends_with(".profdata") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    let merged = dir.join("merged.profdata");
    let status = Command::new(&profdata)
        .arg("merge")
        .arg("-o")
        .arg(&merged)
        .arg(&raw)
        .status()
        .with_context(|| format!("cannot run {}", profdata.display()))?;
    ensure!(status.success(), "llvm-profdata merge failed ({status})");
    // Cargo rebuilds when RUSTFLAGS change, not when a file they name does: the profile is
    // named by its contents, so a new profile recompiles what it optimises.
    let bytes =
        std::fs::read(&merged).with_context(|| format!("cannot read {}", merged.display()))?;
    let mut hasher = std::hash::DefaultHasher::new();
    bytes.hash(&mut hasher);
    let profile = dir.join(format!("weir-{:016x}.profdata", hasher.finish()));
    std::fs::rename(&merged, &profile)?;

    cargo_with(
        &[&["build", "--profile", "dist"][..], &target].concat(),
        &rustflags(&format!("-Cprofile-use={}", profile.display())),
    )?;
    let built = target_dir().join(&rustc.host).join("dist/weir");
    let out = dir.join("weir");
    std::fs::copy(&built, &out)
        .with_context(|| format!("cannot copy {} to {}", built.display(), out.display()))?;
    eprintln!(
        "built {} (the dist profile, optimised with {})",
        out.display(),
        profile.display()
    );
    Ok(())
}

/// `CARGO_ENCODED_RUSTFLAGS` for cargo (flags apart by 0x1f, so a path with a space stays
/// one flag): the caller's flags, then `flag`.
fn rustflags(flag: &str) -> [(&'static str, String); 1] {
    let mut flags: Vec<String> = match std::env::var("CARGO_ENCODED_RUSTFLAGS") {
        Ok(encoded) if !encoded.is_empty() => encoded.split('\x1f').map(str::to_owned).collect(),
        _ => std::env::var("RUSTFLAGS")
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_owned)
            .collect(),
    };
    flags.push(flag.to_owned());
    [("CARGO_ENCODED_RUSTFLAGS", flags.join("\x1f"))]
}

/// What `rustc -vV` says of the compiler: its host and its LLVM's major version.
struct Rustc {
    host: String,
    llvm_major: String,
}

impl Rustc {
    fn read() -> anyhow::Result<Rustc> {
        let output = Command::new(rustc())
            .arg("-vV")
            .output()
            .context("cannot run rustc")?;
        let text = String::from_utf8_lossy(&output.stdout);
        let field = |name: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(name))
                .map(|value| value.trim().to_owned())
        };
        let host = field("host:").context("rustc -vV names no host")?;
        let llvm = field("LLVM version:").context("rustc -vV names no LLVM version")?;
        let llvm_major = llvm.split('.').next().unwrap_or_default().to_owned();
        Ok(Rustc { host, llvm_major })
    }

    /// An `llvm-profdata` of rustc's LLVM (an older one cannot read what a newer LLVM
    /// writes): rustup's `llvm-tools`, else a system LLVM of the same major version.
    fn llvm_profdata(&self) -> anyhow::Result<PathBuf> {
        let major = &self.llvm_major;
        let sysroot = Command::new(rustc())
            .args(["--print", "sysroot"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        let candidates = [
            Path::new(&sysroot)
                .join("lib/rustlib")
                .join(&self.host)
                .join("bin/llvm-profdata"),
            PathBuf::from(format!("/usr/lib/llvm-{major}/bin/llvm-profdata")),
            PathBuf::from(format!("llvm-profdata-{major}")),
            PathBuf::from("llvm-profdata"),
        ];
        let wanted = format!("LLVM version {major}.");
        for candidate in candidates {
            let Ok(output) = Command::new(&candidate).arg("--version").output() else {
                continue;
            };
            if output.status.success() && String::from_utf8_lossy(&output.stdout).contains(&wanted)
            {
                return Ok(candidate);
            }
        }
        bail!(
            "no llvm-profdata of LLVM {major}, rustc's: `rustup component add llvm-tools`, or \
             a system LLVM {major} (Debian: `apt-get install llvm-{major}`)"
        )
    }
}

fn rustc() -> std::ffi::OsString {
    std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into())
}

/// How much of the training traffic to send: each phase's requests divided by this.
#[derive(Clone, Copy)]
struct Share(u32);

impl Share {
    /// All of it, for a profile.
    const FULL: Share = Share(1);
    /// A fiftieth, to check that it works.
    const SMOKE: Share = Share(50);

    /// `count` scaled to this share (at least one).
    fn of(self, count: u32) -> u32 {
        (count / self.0).max(1)
    }
}

/// Serves the training traffic with `weir` twice (see the module's comment); the
/// instrumented binary writes its counts when it exits.
fn train(weir: &Path, plugins: &Path, share: Share) -> anyhow::Result<()> {
    let dir = target_dir().join("pgo/train");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("plugins"))
        .with_context(|| format!("cannot create {}", dir.display()))?;
    // Each plugin with the benchmarks' settings (bench/plugins/), so the routes trained are
    // the routes measured: jwt-auth with the gateway example's secret, which
    // `gateway::mint` signs with.
    let settings = root().join("bench/plugins");
    for name in PLUGINS {
        for (from, file) in [
            (plugins.join(format!("{name}.wasm")), format!("{name}.wasm")),
            (
                settings.join(format!("{name}.toml")),
                format!("{name}.toml"),
            ),
        ] {
            std::fs::copy(&from, dir.join("plugins").join(file))
                .with_context(|| format!("cannot copy {}", from.display()))?;
        }
    }
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])?;
    std::fs::write(dir.join("cert.pem"), certified.cert.pem())?;
    std::fs::write(dir.join("key.pem"), certified.signing_key.serialize_pem())?;
    let trusted = certified.cert.der().clone();

    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let origin = TcpListener::bind("127.0.0.1:0").await?;
        let origin_addr = origin.local_addr()?;
        tokio::spawn(serve_origin(origin));
        let mut roots = rustls::RootCertStore::empty();
        roots.add(trusted)?;
        let roots = Arc::new(roots);
        for run in [Run::OneWorker, Run::Workers] {
            let config = dir.join(format!("{}.toml", run.name()));
            std::fs::write(&config, weir_config(&dir, origin_addr, run))?;
            let share = match run {
                Run::OneWorker => share,
                // A quarter as much: the same code but for the scheduler and the log.
                Run::Workers => Share(share.0 * 4),
            };
            eprintln!("training {} ({})", weir.display(), run.name());
            let mut weir = Weir::start(weir, &config).await?;
            // A stalled weir fails the build rather than hanging it.
            let sent = tokio::time::timeout(TRAFFIC_TIMEOUT, traffic(&weir, &roots, share))
                .await
                .unwrap_or_else(|_| bail!("not done within {} s", TRAFFIC_TIMEOUT.as_secs()));
            let stopped = weir.stop().await;
            sent.with_context(|| format!("training traffic ({})", run.name()))?;
            stopped?;
        }
        Ok(())
    })
}

/// The two ways weir serves the training traffic.
#[derive(Clone, Copy)]
enum Run {
    /// One worker thread (tokio's current-thread scheduler), no access log.
    OneWorker,
    /// The default worker threads, with the JSON access log.
    Workers,
}

impl Run {
    fn name(self) -> &'static str {
        match self {
            Run::OneWorker => "one-worker",
            Run::Workers => "workers",
        }
    }
}

fn weir_config(dir: &Path, origin: SocketAddr, run: Run) -> String {
    let (server, log) = match run {
        Run::OneWorker => ("worker_threads = 1", String::new()),
        Run::Workers => (
            "",
            format!(
                "[access_log]\npath = \"{}\"\n",
                dir.join("access.log").display()
            ),
        ),
    };
    format!(
        r#"[[listeners]]
address = "127.0.0.1:0"

[[listeners]]
address = "127.0.0.1:0"
tls = {{ certificates = [{{ cert = "cert.pem", key = "key.pem" }}] }}

[admin]
address = "127.0.0.1:0"
open = true

[server]
drain_timeout = "5s"
{server}

[plugins]
cache_dir = "{cache}"
watch = false

{log}
[[clusters]]
name = "origin"
endpoints = ["{origin}"]

[[clusters]]
name = "origin-h2c"
endpoints = ["{origin}"]
protocol = "h2c"

[[routes]]
name = "two"
path_prefix = "/p2/"
cluster = "origin"
plugins = ["key-auth", "headers"]

[[routes]]
name = "three"
path_prefix = "/p3/"
cluster = "origin"
plugins = ["jwt-auth", "rate-limit", "rewrite"]

[[routes]]
name = "h2c"
path_prefix = "/h2c/"
cluster = "origin-h2c"
plugins = []

[[routes]]
name = "compressed"
path_prefix = "/z/"
cluster = "origin"
plugins = []
compression = {{}}

[[routes]]
name = "plain"
cluster = "origin"
plugins = []
"#,
        cache = dir.join("cache").display(),
    )
}

/// The origin: 1 KiB of text, or 64 KiB for a path ending in `big`, over HTTP/1.1 or
/// cleartext HTTP/2; a request's body is read first.
async fn serve_origin(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let service = hyper::service::service_fn(|request: Request<Incoming>| async move {
                let len = if request.uri().path().ends_with("big") {
                    BODY.len()
                } else {
                    1024
                };
                let _ = request.into_body().collect().await;
                Response::builder()
                    .header(header::CONTENT_TYPE, "text/plain")
                    .body(Full::new(Bytes::from_static(&BODY[..len])))
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// A weir process and the addresses it listens on.
struct Weir {
    child: Child,
    plain: SocketAddr,
    tls: SocketAddr,
    admin: SocketAddr,
}

impl Weir {
    /// Starts `bin` on `config` and waits until its three listeners have logged their
    /// addresses (the proxy listeners in the config's order, then the admin's).
    async fn start(bin: &Path, config: &Path) -> anyhow::Result<Weir> {
        let mut child = Command::new(bin)
            .arg("--config")
            .arg(config)
            .args(["--log-format", "json"])
            .env("RUST_LOG", "info")
            // Else the counts would go where it says, not to `-Cprofile-generate`'s folder.
            .env_remove("LLVM_PROFILE_FILE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let stderr = child.stderr.take().context("weir's stderr")?;
        let (lines, listening) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                // Lines after the listeners' are read and dropped, so weir never blocks on
                // a full pipe.
                let _ = lines.send(line);
            }
        });
        let started = listen_addresses(listening);
        let addresses = tokio::time::timeout(Duration::from_secs(300), started).await;
        let failed = match addresses {
            Ok(Ok((plain, tls, admin))) => {
                return Ok(Weir {
                    child,
                    plain,
                    tls,
                    admin,
                });
            }
            Ok(Err(e)) => e,
            Err(_) => anyhow::anyhow!("weir did not listen within 300 s"),
        };
        // Killed and reaped: no zombie left behind for the rest of the build.
        let _ = child.kill();
        let _ = child.wait();
        Err(failed)
    }

    /// Stops weir as an operator does (SIGTERM: it drains and exits, and an instrumented
    /// build writes its counts on the way out).
    async fn stop(&mut self) -> anyhow::Result<()> {
        let pid = i32::try_from(self.child.id()).context("weir's pid")?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGTERM)
            .context("cannot send SIGTERM to weir")?;
        for _ in 0..600 {
            if let Some(status) = self.child.try_wait()? {
                ensure!(status.success(), "weir exited with {status}");
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("weir did not exit within 60 s of SIGTERM")
    }
}

impl Drop for Weir {
    /// A weir still running (an error on the way) is killed, not left behind.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The addresses of the `listening` lines in weir's JSON log: (plain, TLS, admin).
async fn listen_addresses(
    mut lines: tokio::sync::mpsc::UnboundedReceiver<String>,
) -> anyhow::Result<(SocketAddr, SocketAddr, SocketAddr)> {
    let mut proxies = Vec::new();
    let mut admin = None;
    let mut seen = Vec::new();
    while proxies.len() < 2 || admin.is_none() {
        let Some(line) = lines.recv().await else {
            bail!("weir exited before it listened:\n{}", seen.join("\n"));
        };
        let parsed: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        let fields = &parsed["fields"];
        if fields["message"] == "listening" {
            let address: SocketAddr = fields["address"]
                .as_str()
                .unwrap_or_default()
                .parse()
                .with_context(|| format!("a listening line without an address: {line}"))?;
            match fields["kind"].as_str() {
                Some("admin") => admin = Some(address),
                _ => proxies.push(address),
            }
        }
        seen.push(line);
    }
    tokio::spawn(async move { while lines.recv().await.is_some() {} });
    match (proxies.as_slice(), admin) {
        ([plain, tls, ..], Some(admin)) => Ok((*plain, *tls, admin)),
        _ => bail!("weir did not log its listeners"),
    }
}

/// One part of the training traffic: `connections` connections at once, each sending
/// `requests` requests (HTTP/2: on each of `streams` streams at once), or a new connection
/// for each request when `fresh`; over TLS when `tls` is set, HTTP/2 (with prior knowledge in
/// clear) when `h2` is.
struct Phase {
    name: &'static str,
    addr: SocketAddr,
    h2: bool,
    connections: u32,
    streams: u32,
    requests: u32,
    fresh: bool,
    method: Method,
    path: &'static str,
    body: usize,
    headers: Vec<(&'static str, String)>,
    /// A response header (name, value) every answer must carry: the plugin or the coding the
    /// phase is there to train did run.
    expect: Option<(&'static str, &'static str)>,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Phase {
    fn get(name: &'static str, addr: SocketAddr, path: &'static str) -> Phase {
        Phase {
            name,
            addr,
            h2: false,
            connections: 16,
            streams: 1,
            requests: 1,
            fresh: false,
            method: Method::GET,
            path,
            body: 0,
            headers: Vec::new(),
            expect: None,
            tls: None,
        }
    }

    fn load(mut self, connections: u32, requests: u32) -> Phase {
        self.connections = connections;
        self.requests = requests;
        self
    }

    fn header(mut self, name: &'static str, value: impl Into<String>) -> Phase {
        self.headers.push((name, value.into()));
        self
    }

    fn expect(mut self, name: &'static str, value: &'static str) -> Phase {
        self.expect = Some((name, value));
        self
    }
}

/// Every phase of the training traffic, one after another; then the admin's metrics.
async fn traffic(
    weir: &Weir,
    roots: &Arc<rustls::RootCertStore>,
    share: Share,
) -> anyhow::Result<()> {
    let token = crate::gateway::mint("bench", 3600)?;
    let bearer = format!("Bearer {token}");
    let n = |count| share.of(count);
    // `resume`: whether a new connection may resume an earlier session (a ticket); the
    // handshake phases' clients may not, so each of their connections is a full handshake.
    let tls = |alpn: &[u8], resume: bool| {
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map(|c| {
            c.with_root_certificates(roots.clone())
                .with_no_client_auth()
        });
        if let Ok(config) = &mut config {
            config.alpn_protocols = vec![alpn.to_vec()];
            if !resume {
                config.resumption = rustls::client::Resumption::disabled();
            }
        }
        config.map(Arc::new)
    };
    let (h1_tls, h2_tls) = (tls(b"http/1.1", true)?, tls(b"h2", true)?);
    let (h1_full, h2_full) = (tls(b"http/1.1", false)?, tls(b"h2", false)?);
    let plain = weir.plain;
    let https = weir.tls;
    let mut phases = vec![
        Phase::get("1 KiB", plain, "/small").load(32, n(2000)),
        Phase::get("64 KiB", plain, "/big").load(8, n(500)),
        Phase {
            method: Method::POST,
            body: 4096,
            ..Phase::get("4 KiB request bodies", plain, "/upload").load(16, n(500))
        },
        Phase::get("key-auth → headers", plain, "/p2/small")
            .load(16, n(600))
            .header("x-api-key", "bench-key")
            .expect("x-frame-options", "DENY"),
        Phase::get("jwt-auth → rate-limit → rewrite", plain, "/p3/small")
            .load(16, n(600))
            .header("authorization", bearer.clone()),
        Phase::get("HTTP/2 upstream", plain, "/h2c/small").load(8, n(500)),
        Phase {
            h2: true,
            streams: 8,
            ..Phase::get("HTTP/2 clients", plain, "/small").load(4, n(600))
        },
        Phase {
            h2: true,
            streams: 4,
            ..Phase::get("HTTP/2 clients, plugins", plain, "/p3/small")
                .load(2, n(500))
                .header("authorization", bearer)
        },
        Phase {
            tls: Some(h1_tls),
            ..Phase::get("HTTPS", https, "/small").load(16, n(600))
        },
        Phase {
            tls: Some(h2_tls),
            h2: true,
            streams: 8,
            ..Phase::get("HTTPS, HTTP/2", https, "/small").load(4, n(500))
        },
        Phase {
            tls: Some(h1_full),
            fresh: true,
            ..Phase::get("full TLS handshakes", https, "/small").load(8, n(100))
        },
        Phase {
            tls: Some(h2_full),
            h2: true,
            fresh: true,
            ..Phase::get("full TLS handshakes, HTTP/2", https, "/small").load(4, n(100))
        },
    ];
    for coding in ["gzip", "br", "zstd"] {
        phases.push(
            Phase::get("compressed responses", plain, "/z/small")
                .load(8, n(200))
                .header("accept-encoding", coding)
                .expect("content-encoding", coding),
        );
    }
    phases.push(Phase::get("metrics", weir.admin, "/metrics").load(1, n(50)));
    for phase in phases {
        let requests = phase.connections * phase.streams * phase.requests;
        #[expect(
            clippy::disallowed_types,
            reason = "a training phase's wall-clock time, for the operator"
        )]
        let started = std::time::Instant::now();
        let name = phase.name;
        run_phase(Arc::new(phase))
            .await
            .with_context(|| format!("phase {name:?}"))?;
        eprintln!(
            "  {name}: {requests} requests in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

async fn run_phase(phase: Arc<Phase>) -> anyhow::Result<()> {
    let mut connections = JoinSet::new();
    for _ in 0..phase.connections {
        let phase = phase.clone();
        connections.spawn(async move {
            if phase.fresh {
                for _ in 0..phase.requests {
                    connect(&phase).await?.exchange(&phase).await?;
                }
                return anyhow::Ok(());
            }
            let mut sender = connect(&phase).await?;
            let Sender::Http2(shared) = &sender else {
                for _ in 0..phase.requests {
                    sender.exchange(&phase).await?;
                }
                return Ok(());
            };
            // HTTP/2: `streams` request loops at once on the one connection.
            let mut streams = JoinSet::new();
            for _ in 0..phase.streams {
                let mut sender = Sender::Http2(shared.clone());
                let phase = phase.clone();
                streams.spawn(async move {
                    for _ in 0..phase.requests {
                        sender.exchange(&phase).await?;
                    }
                    anyhow::Ok(())
                });
            }
            while let Some(done) = streams.join_next().await {
                done??;
            }
            Ok(())
        });
    }
    while let Some(done) = connections.join_next().await {
        done??;
    }
    Ok(())
}

/// A client connection's request side.
enum Sender {
    Http1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    Http2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

/// A new connection to the phase's address, over its wire.
async fn connect(phase: &Phase) -> anyhow::Result<Sender> {
    let tcp = TcpStream::connect(phase.addr).await?;
    tcp.set_nodelay(true)?;
    let h2 = phase.h2;
    match &phase.tls {
        Some(config) => {
            let name = rustls::pki_types::ServerName::try_from("localhost")?;
            let tls = tokio_rustls::TlsConnector::from(config.clone())
                .connect(name, tcp)
                .await?;
            handshake(TokioIo::new(tls), h2).await
        }
        None => handshake(TokioIo::new(tcp), h2).await,
    }
}

async fn handshake<I>(io: I, h2: bool) -> anyhow::Result<Sender>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    if h2 {
        let (sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
        tokio::spawn(connection);
        Ok(Sender::Http2(sender))
    } else {
        let (sender, connection) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(connection);
        Ok(Sender::Http1(sender))
    }
}

impl Sender {
    /// Sends the phase's request and reads the whole response, which must be a success.
    async fn exchange(&mut self, phase: &Phase) -> anyhow::Result<()> {
        let scheme = if phase.tls.is_some() { "https" } else { "http" };
        let mut request = Request::builder().method(phase.method.clone());
        request = match self {
            Sender::Http1(_) => request.uri(phase.path).header(header::HOST, "localhost"),
            Sender::Http2(_) => request.uri(format!("{scheme}://localhost{}", phase.path)),
        };
        for (name, value) in &phase.headers {
            request = request.header(*name, value);
        }
        let request = request.body(Full::new(Bytes::from_static(&BODY[..phase.body])))?;
        let response = match self {
            Sender::Http1(sender) => {
                sender.ready().await?;
                sender.send_request(request).await?
            }
            Sender::Http2(sender) => {
                sender.ready().await?;
                sender.send_request(request).await?
            }
        };
        let status = response.status();
        let missing = phase.expect.filter(|(name, value)| {
            response
                .headers()
                .get(*name)
                .is_none_or(|v| v.as_bytes() != value.as_bytes())
        });
        response.into_body().collect().await?;
        if status != StatusCode::OK {
            bail!("{} {} answered {status}", phase.method, phase.path);
        }
        if let Some((name, value)) = missing {
            bail!(
                "{} {} answered without {name}: {value}",
                phase.method,
                phase.path
            );
        }
        Ok(())
    }
}
