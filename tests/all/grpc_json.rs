//! gRPC ↔ JSON transcoding (issue 25, deliverable 5): REST clients (curl) call a real gRPC
//! server (Python's grpcio, `tests/grpc/peer.py greeter`, serving `helloworld.Greeter`) through
//! weir with the bundled `grpc-json` plugin, configured with the descriptor set of
//! `tests/grpc/proto/helloworld.proto`: the `google.api.http` binding, a path variable and
//! the default `POST /package.Service/Method` mapping answer JSON; `get`, `put`, `patch` and
//! `delete` bindings are made POSTs (weir:plugin 0.3.6's `set-method`), a bodiless one's
//! message made of its path and query and sent as the request's body (`set-body`); the
//! server's own statuses become HTTP statuses with a JSON error, whether sent trailers-only
//! or in the trailers after a message (read by the response body hook, 0.3.6); a body the
//! input message cannot take is refused with 400 before the server sees it. gRPC clients
//! keep a route of their own beside the transcoding one.
//!
//! Most tests put a plain weir between the transcoding weir and the server (see [`start`]),
//! so the answers also pass a second proxy as native gRPC; `curl_calls_the_grpc_service_directly`
//! goes straight to the server, which needs weir to send `te: trailers` on a call a plugin
//! made gRPC.

use std::process::Command;

use serde_json::{Value, json};
use weir_tests::Weir;

const GRPC_JSON: &[u8] = include_bytes!(concat!(env!("BUNDLED_PLUGINS_DIR"), "/grpc_json.wasm"));
/// The descriptor set of `tests/grpc/proto/helloworld.proto`, base64 (how it was made is in
/// that file).
const DESCRIPTOR_SET: &str = include_str!("../grpc/helloworld.pb.b64");

/// `peer.py greeter` on 127.0.0.1:0 (`grpc::GrpcServer`, the same launcher as the echo
/// service's).
type Greeter = crate::grpc::GrpcServer;

/// weir config for one route, `plugins`, to the h2c cluster at `endpoint`.
fn config(endpoint: &str, plugins: &str) -> String {
    format!(
        r#"
[[listeners]]
address = "127.0.0.1:0"

[plugins]
cache_dir = "{cache}"

[[clusters]]
name = "greeter"
endpoints = ["{endpoint}"]
protocol = "h2c"
connect_timeout = "1s"
retries = 0

[[routes]]
name = "greeter"
cluster = "greeter"
plugins = {plugins}
"#,
        cache = crate::plugin_cache().display(),
    )
}

/// weir with `grpc-json` in front of `endpoint`.
async fn transcoding(endpoint: &str) -> Weir {
    let settings = format!(
        "[config]\ndescriptor_set = \"{}\"\nservices = [\"helloworld.Greeter\"]\n",
        DESCRIPTOR_SET.trim()
    );
    let files: [(&str, &[u8]); 2] = [
        ("plugins/grpc-json.wasm", GRPC_JSON),
        ("plugins/grpc-json.toml", settings.as_bytes()),
    ];
    Weir::start_with_files(&config(endpoint, r#"["grpc-json"]"#), &files).await
}

/// The transcoding weir, and a plain weir between it and the greeter: the transcoded call
/// reaches the server through a second proxy as a native gRPC call (trailers, `te`), and
/// everything the server says passes through it as it came.
struct Chain {
    front: Weir,
    _hop: Weir,
}

async fn start(greeter: &Greeter) -> Chain {
    let hop = Weir::start(&config(&format!("127.0.0.1:{}", greeter.port), "[]")).await;
    let front = transcoding(&hop.proxy.to_string()).await;
    Chain { front, _hop: hop }
}

impl Chain {
    fn url(&self, path: &str) -> String {
        self.front.url(path)
    }
}

/// `curl -sS -D - [-X METHOD] [-d BODY] URL`: the status, the `content-type` and the body.
async fn curl(method: &str, url: String, body: Option<&str>) -> (u16, String, String) {
    let mut command = Command::new("curl");
    command.args(["-sS", "-D", "-", "-X", method]);
    if let Some(body) = body {
        command.args(["-H", "content-type: application/json", "-d", body]);
    }
    command.arg(url);
    let out = tokio::task::spawn_blocking(move || command.output().expect("curl"))
        .await
        .expect("curl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a head");
    let head = head.to_ascii_lowercase();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head}"));
    let content_type = head
        .lines()
        .find_map(|l| l.strip_prefix("content-type: "))
        .unwrap_or("")
        .to_owned();
    (status, content_type, body.to_owned())
}

fn json_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{body:?} is not JSON: {e}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn curl_calls_the_grpc_service_with_json() {
    let greeter = Greeter::start_mode("greeter");
    let weir = start(&greeter).await;
    // The issue's bar: `curl -d '{"name":"x"}' .../v1/greeter/hello`.
    let (status, content_type, body) = curl(
        "POST",
        weir.url("/v1/greeter/hello"),
        Some(r#"{"name":"x"}"#),
    )
    .await;
    assert_eq!(
        (status, content_type.as_str()),
        (200, "application/json"),
        "{body}"
    );
    assert_eq!(json_of(&body), json!({"message": "Hello x"}));
    // The default mapping, for a method without an annotation.
    let (status, _, body) = curl(
        "POST",
        weir.url("/helloworld.Greeter/SayGoodbye"),
        Some(r#"{"name":"y"}"#),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json_of(&body), json!({"message": "Goodbye y"}));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_servers_status_becomes_an_http_status_with_a_json_error() {
    let greeter = Greeter::start_mode("greeter");
    let weir = start(&greeter).await;
    let url = weir.url("/v1/greeter/hello");
    let (status, content_type, body) = curl("POST", url.clone(), Some(r#"{"name":""}"#)).await;
    assert_eq!(
        (status, content_type.as_str()),
        (400, "application/json"),
        "{body}"
    );
    assert_eq!(
        json_of(&body),
        json!({"code": 3, "message": "name is empty"})
    );
    let (status, _, body) = curl("POST", url, Some(r#"{"name":"hidden"}"#)).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(
        json_of(&body),
        json!({"code": 5, "message": "no one called hidden"})
    );
}

/// The issue's bar, straight from the transcoding weir to the greeter: weir sends
/// `te: trailers` (which grpcio requires) on the call the plugin made gRPC.
#[tokio::test(flavor = "multi_thread")]
async fn curl_calls_the_grpc_service_directly() {
    let greeter = Greeter::start_mode("greeter");
    let weir = transcoding(&format!("127.0.0.1:{}", greeter.port)).await;
    let (status, _, body) = curl(
        "POST",
        weir.url("/v1/greeter/hello"),
        Some(r#"{"name":"x"}"#),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json_of(&body), json!({"message": "Hello x"}));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_the_message_cannot_take_is_refused_with_400() {
    let greeter = Greeter::start_mode("greeter");
    let weir = start(&greeter).await;
    let url = weir.url("/v1/greeter/hello");
    for body in ["{not json", r#"{"nam":"x"}"#] {
        let (status, content_type, reply) = curl("POST", url.clone(), Some(body)).await;
        assert_eq!(
            (status, content_type.as_str()),
            (400, "application/json"),
            "{reply}"
        );
        assert_eq!(json_of(&reply)["code"], 3, "{reply}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_post_binding_takes_a_field_from_the_path() {
    let greeter = Greeter::start_mode("greeter");
    let weir = start(&greeter).await;
    let (status, _, body) = curl("POST", weir.url("/v1/greeters/J%C3%BCrgen"), Some("{}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json_of(&body), json!({"message": "Hello Jürgen"}));
}

/// `get`, `put`, `patch` and `delete` bindings call the service: each request is made a POST
/// (`set-method`); a GET's and a DELETE's message is made of the path and query in the head
/// hook and sent as the body (`set-body`), a PUT's of its body as one field and the query
/// as others, a PATCH's of its body as the whole message.
#[tokio::test(flavor = "multi_thread")]
async fn get_put_patch_and_delete_bindings_call_the_service() {
    let greeter = Greeter::start_mode("greeter");
    let weir = start(&greeter).await;
    let call = |method: &'static str, path: &str, body: Option<&'static str>| {
        let url = weir.url(path);
        async move { curl(method, url, body).await }
    };
    let (status, content_type, body) = call("GET", "/v1/greeter/ann", None).await;
    assert_eq!(
        (status, content_type.as_str()),
        (200, "application/json"),
        "{body}"
    );
    assert_eq!(json_of(&body), json!({"message": "Hello ann"}));
    // The path and the query in one message; a server stream's messages as an array.
    let (status, _, body) = call("GET", "/v1/greeter/J%C3%BCrgen/hellos?times=2", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        json_of(&body),
        json!([{"message": "Hello Jürgen #1"}, {"message": "Hello Jürgen #2"}])
    );
    let (status, _, body) = call(
        "PUT",
        "/v1/greetings/ann?tags=a&tags=b",
        Some(r#"{"text":"hi","shout":true}"#),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json_of(&body), json!({"message": "ann: hi! [a,b]"}));
    // A PUT without a body: the path and query alone.
    let (status, _, body) = call("PUT", "/v1/greetings/bo?tags=t", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json_of(&body), json!({"message": "bo:  [t]"}));
    let (status, _, body) = call(
        "PATCH",
        "/v1/greetings/ann",
        Some(r#"{"greeting":{"text":"yo"},"tags":["x"]}"#),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json_of(&body), json!({"message": "ann: yo [x]"}));
    let (status, _, body) = call("DELETE", "/v1/greetings/ann", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json_of(&body), json!({"message": "Deleted ann"}));
    let (status, _, body) = call("DELETE", "/v1/greetings/hidden", None).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(
        json_of(&body),
        json!({"code": 5, "message": "no one called hidden"})
    );
    // A query parameter the message lacks: 400, the server never called.
    let (status, _, body) = call("GET", "/v1/greeter/ann?nope=1", None).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(json_of(&body)["code"], 3);
}

/// A status the server sends in the trailers after a message (a stream that broke after its
/// first message) reaches the REST client as the error it is, not as the message before it
/// with a 200: through a second proxy, and straight from the server.
#[tokio::test(flavor = "multi_thread")]
async fn a_status_after_a_message_reaches_the_client_as_an_error() {
    let greeter = Greeter::start_mode("greeter");
    let chained = start(&greeter).await;
    let direct = transcoding(&format!("127.0.0.1:{}", greeter.port)).await;
    for url in [
        chained.url("/v1/greeter/broken/hellos"),
        direct.url("/v1/greeter/broken/hellos"),
    ] {
        let (status, content_type, body) = curl("GET", url.clone(), None).await;
        assert_eq!(
            (status, content_type.as_str()),
            (503, "application/json"),
            "{url}: {body}"
        );
        assert_eq!(
            json_of(&body),
            json!({"code": 14, "message": "stream broke"}),
            "{url}"
        );
    }
}

/// gRPC clients share the listener and the service, on a route of their own: body hooks
/// drop trailers (the call's status), so a gRPC call must not cross a route with
/// `grpc-json`. A route matching `content-type: application/grpc...` ahead of the
/// transcoding one keeps them apart.
#[tokio::test(flavor = "multi_thread")]
async fn grpc_clients_keep_a_route_without_the_plugin() {
    let echo = Greeter::start_mode("server");
    let settings = format!(
        "[config]\ndescriptor_set = \"{}\"\nservices = [\"helloworld.Greeter\"]\n",
        DESCRIPTOR_SET.trim()
    );
    let files: [(&str, &[u8]); 2] = [
        ("plugins/grpc-json.wasm", GRPC_JSON),
        ("plugins/grpc-json.toml", settings.as_bytes()),
    ];
    let native = r#"
[[routes]]
name = "grpc-clients"
cluster = "greeter"
headers = [{ name = "content-type", regex = "application/grpc.*" }]
plugins = []
"#;
    let config = config(&format!("127.0.0.1:{}", echo.port), r#"["grpc-json"]"#);
    // Among equal paths, weir tries the route with more conditions first.
    let (head, routes) = config.split_once("[[routes]]").expect("a route");
    let config = format!("{head}{native}\n[[routes]]{routes}");
    let weir = Weir::start_with_files(&config, &files).await;
    let target = weir.proxy.to_string();
    let results = tokio::task::spawn_blocking(move || crate::grpc::calls(&target, &[]))
        .await
        .expect("client");
    let call = |name: &str| {
        results
            .iter()
            .find(|r| r["call"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} call in {results:?}"))
    };
    assert_eq!(
        call("unary"),
        json!({"call": "unary", "code": 0, "messages": ["unary:hi"]})
    );
    assert_eq!(call("fail")["code"], 5, "{results:?}");
}
