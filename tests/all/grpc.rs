//! gRPC through weir with a real gRPC server and client (Python's grpcio, `tests/grpc/peer.py`,
//! raw-bytes methods, no generated code): unary, server-streaming and bidirectional calls
//! over HTTP/2 both ways, the upstream's own `grpc-status` passing back in trailers, the
//! client's deadline (`grpc-timeout`) bounding weir's exchange in place of the cluster's
//! response timeout, and weir's own failures — no endpoint, a plugin's refusal, a cluster
//! that speaks only HTTP/1.1 — answered as gRPC statuses.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use std::time::Duration;

use hyper::Request;
use serde_json::Value;
use weir_tests::{Weir, closed_port, full, http2_client};

fn peer_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("grpc/peer.py")
}

/// A `peer.py` gRPC server, on 127.0.0.1:0; it stops when its stdin closes (the value is
/// dropped). Also `grpc_json`'s greeter.
pub(crate) struct GrpcServer {
    child: Child,
    pub(crate) port: u16,
}

impl GrpcServer {
    /// The echo service (`peer.py server`).
    fn start() -> GrpcServer {
        GrpcServer::start_mode("server")
    }

    /// `peer.py MODE`: `server` (the echo service) or `greeter` (`helloworld.Greeter`).
    pub(crate) fn start_mode(mode: &str) -> GrpcServer {
        let mut child = Command::new("python3")
            .arg(peer_script())
            .arg(mode)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 (with grpcio: .ci/run installs it) runs tests/grpc/peer.py");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("the server's port");
        let port = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("the gRPC server printed {line:?}, not its port"));
        GrpcServer { child, port }
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every call of the client through `target`, with `metadata`: call name → its outcome.
pub(crate) fn calls(target: &str, metadata: &[&str]) -> Vec<Value> {
    let output = Command::new("python3")
        .arg(peer_script())
        .arg("client")
        .arg(target)
        .args(metadata)
        .output()
        .expect("python3 runs the gRPC client");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

fn config(endpoint: &str, extra: &str) -> String {
    format!(
        r#"
[[listeners]]
address = "127.0.0.1:0"

[plugins]
cache_dir = "{cache}"

[[clusters]]
name = "grpc"
endpoints = ["{endpoint}"]
protocol = "h2c"
connect_timeout = "1s"
retries = 0

[[routes]]
name = "grpc"
cluster = "grpc"
{extra}
"#,
        cache = crate::plugin_cache().display()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn unary_streaming_and_bidi_calls_pass_with_the_upstreams_own_status() {
    let server = GrpcServer::start();
    let weir = Weir::start(&config(
        &format!("127.0.0.1:{}", server.port),
        "plugins = []",
    ))
    .await;
    let target = weir.proxy.to_string();
    let results = tokio::task::spawn_blocking(move || calls(&target, &[]))
        .await
        .expect("client");
    let by_name = |name: &str| {
        results
            .iter()
            .find(|r| r["call"] == name)
            .unwrap_or_else(|| panic!("no {name} call in {results:?}"))
            .clone()
    };
    assert_eq!(
        by_name("unary"),
        serde_json::json!({"call": "unary", "code": 0, "messages": ["unary:hi"]})
    );
    assert_eq!(
        by_name("server-stream")["messages"],
        serde_json::json!(["part-1:s", "part-2:s", "part-3:s"])
    );
    assert_eq!(
        by_name("bidi")["messages"],
        serde_json::json!(["bidi:a", "bidi:b", "bidi:c"])
    );
    // NOT_FOUND and its details came from the server, in trailers, through weir.
    assert_eq!(
        by_name("fail"),
        serde_json::json!({"call": "fail", "code": 5, "details": "no such thing"})
    );
    // The client gave up at its 0.5 s deadline (whether weir's timer or the client's fired
    // first is a race; the next test takes the client's timer out).
    assert_eq!(by_name("slow")["code"], 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_calls_grpc_timeout_bounds_weirs_exchange_with_the_endpoint() {
    let server = GrpcServer::start();
    let mut weir = Weir::start(&config(
        &format!("127.0.0.1:{}", server.port),
        "plugins = []",
    ))
    .await;
    // A raw call with `grpc-timeout: 300m` from a client with no deadline of its own: only
    // weir can end it, and it must, at 0.3 s rather than the endpoint's 5 s.
    let request = Request::post(format!("http://{}/echo.Echo/Slow", weir.proxy))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", "300m")
        .body(full(&b"\0\0\0\0\x01z"[..]))
        .expect("request");
    let response = tokio::time::timeout(Duration::from_secs(4), http2_client().request(request))
        .await
        .expect("weir ended the call before the endpoint answered")
        .expect("response");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["grpc-status"], "4", "{response:?}");
    let failed = weir.wait_for_message("request failed").await;
    assert_eq!(failed["kind"], "UpstreamTimeout", "{failed}");
}

/// A raw unary call to `Slow` taking `seconds`, with `grpc-timeout: deadline`: the HTTP
/// status, `grpc-status` and body.
async fn slow_call(weir: &Weir, seconds: &str, deadline: &str) -> (u16, String, Vec<u8>) {
    let mut message = vec![0, 0, 0, 0, u8::try_from(seconds.len()).expect("short")];
    message.extend_from_slice(seconds.as_bytes());
    let request = Request::post(format!("http://{}/echo.Echo/Slow", weir.proxy))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", deadline)
        .body(full(message))
        .expect("request");
    let response = tokio::time::timeout(Duration::from_secs(10), http2_client().request(request))
        .await
        .expect("an answer within 10 s")
        .expect("response");
    let status = response.status().as_u16();
    let (head, body) = response.into_parts();
    let collected = http_body_util::BodyExt::collect(body).await.expect("body");
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let code = head
        .headers
        .get("grpc-status")
        .or_else(|| trailers.get("grpc-status"))
        .map(|v| v.to_str().unwrap_or("").to_owned())
        .unwrap_or_default();
    (status, code, collected.to_bytes().to_vec())
}

/// A call's `grpc-timeout` longer than the cluster's `response_timeout` is the call's own:
/// a 1 s call with a 5 s deadline succeeds through a cluster whose response timeout is
/// 300 ms (which still cuts a call with no deadline of its own).
#[tokio::test(flavor = "multi_thread")]
async fn a_calls_longer_grpc_timeout_replaces_the_response_timeout() {
    let server = GrpcServer::start();
    let config = config(&format!("127.0.0.1:{}", server.port), "plugins = []")
        .replace("retries = 0", "retries = 0\nresponse_timeout = \"300ms\"");
    let weir = Weir::start(&config).await;
    let (status, code, body) = slow_call(&weir, "1", "5S").await;
    assert_eq!((status, code.as_str()), (200, "0"), "{body:?}");
    assert_eq!(&body[5..], b"1", "the server's answer");

    // Without a deadline of its own, the call has the cluster's.
    let request = Request::post(format!("http://{}/echo.Echo/Slow", weir.proxy))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(full(&b"\0\0\0\0\x011"[..]))
        .expect("request");
    let response = http2_client().request(request).await.expect("response");
    assert_eq!(response.headers()["grpc-status"], "4", "{response:?}");
}

/// A gRPC call routed to a cluster that speaks only HTTP/1.1 is refused at once, with a
/// status that says so (UNIMPLEMENTED, 12, not a retryable UNAVAILABLE) and a log line
/// naming the cluster, instead of whatever the endpoint makes of an HTTP/1.1 request.
#[tokio::test(flavor = "multi_thread")]
async fn a_grpc_call_to_an_http1_cluster_is_refused_saying_why() {
    let server = GrpcServer::start();
    let config = config(&format!("127.0.0.1:{}", server.port), "plugins = []")
        .replace("protocol = \"h2c\"", "protocol = \"http1\"");
    let mut weir = Weir::start(&config).await;
    let request = Request::post(format!("http://{}/echo.Echo/Unary", weir.proxy))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(full(&b"\0\0\0\0\x02hi"[..]))
        .expect("request");
    let response = http2_client().request(request).await.expect("response");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["grpc-status"], "12", "{response:?}");
    let message = response.headers()["grpc-message"].to_str().expect("text");
    assert!(message.contains("HTTP/2"), "{message}");
    let failed = weir.wait_for_message("request failed").await;
    assert_eq!(failed["kind"], "UpstreamProtocol", "{failed}");
    assert!(
        failed["cause"]
            .as_str()
            .is_some_and(|c| c.contains("cluster grpc")),
        "{failed}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn weirs_own_failures_reach_a_grpc_client_as_grpc_statuses() {
    // Every endpoint down: UNAVAILABLE (14), not an HTTP 503 the client cannot read.
    let down = closed_port();
    let weir = Weir::start(&config(&down.addr.to_string(), "plugins = []")).await;
    let target = weir.proxy.to_string();
    let results = tokio::task::spawn_blocking(move || calls(&target, &[]))
        .await
        .expect("client");
    for result in &results {
        assert_eq!(result["code"], 14, "{result}");
    }

    // A plugin's refusal: key-auth's 401 becomes UNAUTHENTICATED (16); with the key, the
    // call goes through.
    let server = GrpcServer::start();
    let files = crate::key_auth_files();
    let weir =
        Weir::start_with_files(&config(&format!("127.0.0.1:{}", server.port), ""), &files).await;
    let target = weir.proxy.to_string();
    let results = tokio::task::spawn_blocking(move || {
        (
            calls(&target, &[]),
            calls(&target, &["x-api-key=alice-key"]),
        )
    })
    .await
    .expect("client");
    let (refused, allowed) = results;
    assert_eq!(refused[0]["call"], "unary");
    assert_eq!(refused[0]["code"], 16, "{refused:?}");
    assert_eq!(allowed[0]["code"], 0, "{allowed:?}");
}
