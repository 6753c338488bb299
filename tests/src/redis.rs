//! A real `redis-server` (Debian's, installed by `.ci/run`) for the shared-state tests:
//! started on a free port of 127.0.0.1 in a folder of its own, persisting nothing, killed
//! when dropped. It can be stopped and started again on the same port, to test what weir
//! does while its store is down and after it is back.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::DEADLINE;

/// A running (or stopped) redis-server.
#[derive(Debug)]
pub struct Redis {
    child: Option<Child>,
    /// The port it listens on, kept across restarts.
    pub port: u16,
    dir: tempfile::TempDir,
    /// Whether the port speaks TLS (then readiness is a connection, not a `PING`).
    tls: bool,
    /// More `redis-server` arguments.
    extra: Vec<String>,
}

impl Redis {
    /// Starts a redis-server on a free port and waits until it answers `PING`.
    pub async fn start() -> Redis {
        Redis::start_with(false, Vec::new(), &[]).await
    }

    /// Starts a redis-server that speaks only TLS, with the certificate and key `leaf` (PEM)
    /// and clients authenticated by `password`; waits until its port accepts connections.
    pub async fn start_tls(cert: &str, key: &str, password: &str) -> Redis {
        let extra = [
            "--tls-cert-file",
            "server.pem",
            "--tls-key-file",
            "server.key",
            "--tls-auth-clients",
            "no",
            "--requirepass",
            password,
        ];
        let files = [("server.pem", cert), ("server.key", key)];
        Redis::start_with(true, extra.iter().map(|s| s.to_string()).collect(), &files).await
    }

    async fn start_with(tls: bool, extra: Vec<String>, files: &[(&str, &str)]) -> Redis {
        let mut redis = Redis {
            child: None,
            port: 0,
            dir: tempfile::tempdir().expect("a folder for redis"),
            tls,
            extra,
        };
        for (name, contents) in files {
            std::fs::write(redis.dir.path().join(name), contents).expect("write a redis file");
        }
        for _ in 0..5 {
            redis.port = free_port();
            if redis.spawn().await {
                return redis;
            }
        }
        panic!("redis-server did not start on any of 5 free ports");
    }

    /// Starts it again on its port after [`Redis::kill`].
    pub async fn restart(&mut self) {
        assert!(
            self.spawn().await,
            "redis-server did not restart on port {}",
            self.port
        );
    }

    /// Kills it at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Makes the server stop answering for `seconds` (`DEBUG SLEEP`, as a stalled or
    /// overloaded Redis would) and returns once it has stopped: a `PING` goes unanswered for
    /// 100 ms. Join the handle to wait for the stall to end.
    pub async fn stall(&self, seconds: u32) -> std::thread::JoinHandle<()> {
        let port = self.port.to_string();
        let sleeping = std::thread::spawn(move || {
            let _ = Command::new("redis-cli")
                .args(["-p", &port, "DEBUG", "SLEEP", &seconds.to_string()])
                .output();
        });
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let answered =
                tokio::time::timeout(std::time::Duration::from_millis(100), ping(self.port)).await;
            if answered.is_err() {
                return sleeping;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server never stalled"
            );
        }
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Runs one `redis-cli` command line against it (given on stdin, so quoted arguments may
    /// hold escapes such as `"\x00"`) and returns what it printed.
    pub fn cli(&self, command: &str) -> String {
        let mut child = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("redis-cli (apt-get install redis-tools)");
        if let Some(mut stdin) = child.stdin.take() {
            use std::io::Write;
            let _ = writeln!(stdin, "{command}");
        }
        let out = child.wait_with_output().expect("redis-cli output");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Spawns the server and waits for `PING`; false if it exited (its port was taken).
    async fn spawn(&mut self) -> bool {
        let port = self.port.to_string();
        let listen: Vec<&str> = if self.tls {
            vec!["--port", "0", "--tls-port", &port]
        } else {
            vec!["--port", &port]
        };
        let child = Command::new("redis-server")
            .args(listen)
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(&self.extra)
            .current_dir(self.dir.path())
            .args(["--enable-debug-command", "yes"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (apt-get install redis-server)");
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while tokio::time::Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                return false;
            }
            let ready = if self.tls {
                TcpStream::connect(("127.0.0.1", self.port)).await.is_ok()
            } else {
                ping(self.port).await
            };
            if ready {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("redis-server on port {} did not answer PING", self.port);
    }

    /// The folder it runs in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether a Redis on `port` answers `PING`.
async fn ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    if stream.write_all(b"PING\r\n").await.is_err() {
        return false;
    }
    let mut answer = [0u8; 7];
    stream.read_exact(&mut answer).await.is_ok() && &answer == b"+PONG\r\n"
}

/// A port nothing listens on now (a listener's, then dropped).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A Redis Cluster of three masters (no replicas) on free ports, each a [`Redis`] in
/// cluster mode, joined with `redis-cli --cluster create`; ready once every node reports
/// `cluster_state:ok`.
#[derive(Debug)]
pub struct RedisCluster {
    /// The nodes.
    pub nodes: Vec<Redis>,
}

impl RedisCluster {
    /// Starts the three nodes and makes them one cluster.
    pub async fn start() -> RedisCluster {
        let mut nodes = Vec::new();
        for _ in 0..3 {
            let extra = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
            ];
            let extra = extra.iter().map(|s| s.to_string()).collect();
            nodes.push(Redis::start_with(false, extra, &[]).await);
        }
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            created.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&created.stdout)
        );
        let deadline = tokio::time::Instant::now() + DEADLINE;
        for node in &nodes {
            while !node.cli("CLUSTER INFO").contains("cluster_state:ok") {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the cluster never became ok"
                );
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
        RedisCluster { nodes }
    }

    /// Every node's `redis://` URL.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(Redis::url).collect()
    }

    /// How many keys each node holds.
    pub fn keys_per_node(&self) -> Vec<usize> {
        self.nodes
            .iter()
            .map(|n| n.cli("DBSIZE").parse().unwrap_or(0))
            .collect()
    }
}
