//! A real `weir` process for tests: started on a config written to a temporary folder,
//! its JSON logs captured, its listening addresses read from its `listening` log lines.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use tokio::sync::watch;

use crate::DEADLINE;

/// The `weir` binary under test: `$WEIR_BIN`, else `weir` in the same target folder as the
/// running test (`cargo xtask test` builds it before the tests run).
pub fn weir_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("WEIR_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/all-<hash> → target/<profile>/weir
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("weir");
    assert!(
        bin.exists(),
        "{} does not exist: build it first (`cargo build -p weir-host`, or run the tests with `cargo xtask test`)",
        bin.display()
    );
    bin
}

/// A running weir process. Killed when dropped.
#[derive(Debug)]
pub struct Weir {
    child: Child,
    /// The first proxy listener's real address.
    pub proxy: SocketAddr,
    /// The admin listener's real address, if the config has one.
    pub admin: Option<SocketAddr>,
    logs: watch::Receiver<Vec<Value>>,
    dir: tempfile::TempDir,
    /// How long `wait_for_logs` waits.
    deadline: std::time::Duration,
}

impl Weir {
    /// Writes `config` as `weir.toml` in a fresh folder and starts weir on it; returns once
    /// every listener (proxy and admin) has logged its address.
    pub async fn start(config: &str) -> Weir {
        Weir::start_with_files(config, &[]).await
    }

    /// Like [`Weir::start`], with `files` (path relative to the config's folder, contents)
    /// written first: plugins and their settings, for example.
    pub async fn start_with_files(config: &str, files: &[(&str, &[u8])]) -> Weir {
        Weir::start_within(config, files, DEADLINE).await
    }

    /// Like [`Weir::start_with_files`], waiting up to `deadline` (for this start and every
    /// later wait): for plugins that take long to compile in a debug build, such as the
    /// JavaScript and Python ones.
    pub async fn start_within(
        config: &str,
        files: &[(&str, &[u8])],
        deadline: std::time::Duration,
    ) -> Weir {
        let mut weir = Weir::spawn_with_files(config, files);
        weir.deadline = deadline;
        weir.wait_listening(config).await
    }

    /// Like [`Weir::start_with_files`], with `env` (name, value) added to weir's environment:
    /// for settings read from environment variables, such as `[admin] token_env`.
    pub async fn start_with_env(
        config: &str,
        files: &[(&str, &[u8])],
        env: &[(&str, &str)],
    ) -> Weir {
        Weir::spawn(config, files, None, env)
            .wait_listening(config)
            .await
    }

    /// Like [`Weir::start_with_files`], with weir's virtual address space limited to
    /// `limit_bytes` (`ulimit -v`), as some hosts and valgrind limit it.
    pub async fn start_with_address_space_limit(
        config: &str,
        files: &[(&str, &[u8])],
        limit_bytes: u64,
    ) -> Weir {
        Weir::spawn(config, files, Some(limit_bytes), &[])
            .wait_listening(config)
            .await
    }

    /// Waits until every listener in `config` (proxy and admin) has logged its address.
    async fn wait_listening(mut self, config: &str) -> Weir {
        let expected =
            config.matches("[[listeners]]").count() + usize::from(config.contains("[admin]"));
        let logs = self
            .wait_for_logs(|logs| listening(logs).len() >= expected)
            .await;
        for (kind, address) in listening(&logs) {
            match kind.as_str() {
                "admin" => self.admin = Some(address),
                _ if self.proxy.port() == 0 => self.proxy = address,
                _ => {}
            }
        }
        self
    }

    /// Starts weir like [`Weir::start_with_files`] but returns at once, without waiting for
    /// it to listen: for tests of startup failures.
    pub fn spawn_with_files(config: &str, files: &[(&str, &[u8])]) -> Weir {
        Weir::spawn(config, files, None, &[])
    }

    fn spawn(
        config: &str,
        files: &[(&str, &[u8])],
        address_space_limit: Option<u64>,
        env: &[(&str, &str)],
    ) -> Weir {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("weir.toml");
        std::fs::write(&path, config).expect("write config");
        for (name, contents) in files {
            let file = dir.path().join(name);
            std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
            std::fs::write(file, contents).expect("write file");
        }
        let mut command = match address_space_limit {
            // The shell sets the limit and becomes weir (`exec`): same pid, same signals.
            Some(bytes) => {
                let mut shell = Command::new("sh");
                shell
                    .arg("-c")
                    .arg(format!("ulimit -v {} && exec \"$0\" \"$@\"", bytes / 1024))
                    .arg(weir_bin());
                shell
            }
            None => Command::new(weir_bin()),
        };
        let mut child = command
            .arg("--config")
            .arg(&path)
            .arg("--log-format")
            .arg("json")
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn weir");
        let (tx, logs) = watch::channel(Vec::new());
        let stderr = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                // Echoed so a failing test shows what weir said.
                eprintln!("weir: {line}");
                let value = serde_json::from_str(&line).unwrap_or(Value::String(line));
                tx.send_modify(|logs| logs.push(value));
            }
        });

        Weir {
            child,
            proxy: SocketAddr::from(([0, 0, 0, 0], 0)),
            admin: None,
            logs,
            dir,
            deadline: DEADLINE,
        }
    }

    /// Writes `contents` to `path` (relative to the config's folder) in one write.
    pub fn write(&self, path: &str, contents: &[u8]) {
        std::fs::write(self.dir.path().join(path), contents).expect("write file");
    }

    /// Writes `contents` to a temporary name beside `path`, then renames it over `path`:
    /// what editors and `install` do.
    pub fn write_and_rename(&self, path: &str, contents: &[u8]) {
        let target = self.dir.path().join(path);
        let temp = target.with_extension("tmp~");
        std::fs::write(&temp, contents).expect("write temp file");
        std::fs::rename(&temp, &target).expect("rename");
    }

    /// Removes `path` (relative to the config's folder).
    pub fn remove(&self, path: &str) {
        std::fs::remove_file(self.dir.path().join(path)).expect("remove file");
    }

    /// `http://PROXY_ADDRESS/path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy)
    }

    /// `http://ADMIN_ADDRESS/path`.
    pub fn admin_url(&self, path: &str) -> String {
        format!(
            "http://{}{path}",
            self.admin.expect("config has no [admin]")
        )
    }

    /// The admin listener's `/clusters`: every cluster's counters and endpoints.
    pub async fn clusters(&self) -> Value {
        let response = crate::http1_client()
            .get(self.admin_url("/clusters").parse().expect("uri"))
            .await
            .expect("admin");
        serde_json::from_slice(&crate::read_body(response.into_body()).await).expect("json")
    }

    /// The admin listener's `/metrics`, as Prometheus text.
    pub async fn metrics(&self) -> String {
        let response = crate::http1_client()
            .get(self.admin_url("/metrics").parse().expect("uri"))
            .await
            .expect("admin");
        assert_eq!(response.status(), http::StatusCode::OK, "/metrics");
        String::from_utf8_lossy(&crate::read_body(response.into_body()).await).into_owned()
    }

    /// The value of the series `name` whose labels include `labels` on `/metrics`.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        crate::metric(&self.metrics().await, name, labels)
    }

    /// The folder holding `weir.toml`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Waits until the log lines so far satisfy `done`; returns them. Panics at the deadline
    /// (or if weir exits first) with the logs in the message.
    pub async fn wait_for_logs(&mut self, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let mut logs = self.logs.clone();
        let found = match tokio::time::timeout(self.deadline, logs.wait_for(|l| done(l))).await {
            Ok(Ok(found)) => Some(found.clone()),
            Ok(Err(_)) | Err(_) => None,
        };
        found.unwrap_or_else(|| {
            let exited = self.child.try_wait().ok().flatten();
            panic!(
                "expected log lines did not appear (weir exited: {exited:?}); logs: {:#?}",
                *self.logs.borrow()
            )
        })
    }

    /// Waits for the first log line whose message starts with `prefix`; returns its
    /// `fields` object (message, plugin, error, …).
    pub async fn wait_for_message(&mut self, prefix: &str) -> Value {
        let starts = |l: &Value| {
            l["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with(prefix))
        };
        let logs = self.wait_for_logs(|logs| logs.iter().any(starts)).await;
        logs.into_iter()
            .find(starts)
            .map(|l| l["fields"].clone())
            .unwrap_or_default()
    }

    /// Every JSON log line so far.
    pub fn logs(&self) -> Vec<Value> {
        self.logs.borrow().clone()
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: Signal) {
        let pid = i32::try_from(self.child.id()).expect("pid");
        kill(Pid::from_raw(pid), signal).expect("kill");
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process's peak resident set size (`VmHWM`), in KiB: since it started, or since
    /// the last [`Weir::reset_peak_rss`].
    pub fn peak_rss_kib(&self) -> i64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("/proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM")
    }

    /// Makes the peak resident set size the current one (Linux's `clear_refs`), so that
    /// [`Weir::peak_rss_kib`] measures what comes next, not startup's compiling.
    pub fn reset_peak_rss(&self) {
        std::fs::write(format!("/proc/{}/clear_refs", self.pid()), "5").expect("clear_refs");
    }

    /// What `during` yields, and how far weir's peak resident set grew while it ran, in KiB
    /// (the peak reset first, so earlier work does not hide it). The growth is printed, with
    /// the test's name, for measuring a bound's spread: `cargo test -p weir-tests --test all
    /// -- NAME --nocapture | grep RSS-GROWTH`.
    pub async fn peak_rss_growth<T>(&self, during: impl Future<Output = T>) -> (T, i64) {
        self.reset_peak_rss();
        let before = self.peak_rss_kib();
        let out = during.await;
        let growth = self.peak_rss_kib() - before;
        let test = std::thread::current();
        eprintln!("RSS-GROWTH {} {growth}", test.name().unwrap_or("?"));
        (out, growth)
    }

    /// Waits for the process to exit and for the last of its logs to be read; panics at the
    /// deadline.
    pub async fn wait_exit(&mut self) -> ExitStatus {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            assert!(tokio::time::Instant::now() < deadline, "weir did not exit");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        };
        // The reader thread ends, dropping the sender, at the end of weir's stderr.
        let mut logs = self.logs.clone();
        let read_all = async { while logs.changed().await.is_ok() {} };
        tokio::time::timeout_at(deadline, read_all)
            .await
            .expect("weir's log stream did not end after it exited");
        status
    }
}

impl Drop for Weir {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `(kind, address)` of every `listening` log line.
fn listening(logs: &[Value]) -> Vec<(String, SocketAddr)> {
    logs.iter()
        .filter(|l| l["fields"]["message"] == "listening")
        .filter_map(|l| {
            let kind = l["fields"]["kind"].as_str()?.to_owned();
            let address = l["fields"]["address"].as_str()?.parse().ok()?;
            Some((kind, address))
        })
        .collect()
}
