//! Unit tests through the SDK's harness, against the descriptor set of
//! `tests/grpc/proto/helloworld.proto` (`helloworld.Greeter`, with `google.api.http`).

use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage, Value as Field};
use serde_json::{Value, json};
use weir_plugin::testing::{Harness, TestRequest};

use super::{GrpcJson, frame, http_status};

const DESCRIPTOR_SET: &str = include_str!("../../../tests/grpc/helloworld.pb.b64");

fn grpc_json() -> Harness<GrpcJson> {
    let config = format!(
        "descriptor_set = \"{}\"\nservices = [\"helloworld.Greeter\"]",
        DESCRIPTOR_SET.trim()
    );
    Harness::new(&config).expect("valid config")
}

fn pool() -> DescriptorPool {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(DESCRIPTOR_SET.trim())
        .expect("base64");
    DescriptorPool::decode(bytes.as_slice()).expect("descriptor set")
}

fn post(path: &str) -> TestRequest {
    TestRequest::new("POST", path).header("content-type", "application/json")
}

/// The `HelloRequest` in a framed request body.
fn hello_request(framed: &[u8]) -> DynamicMessage {
    let messages = frame::decode_all(framed).expect("framed");
    assert_eq!(messages.len(), 1);
    let input = pool()
        .get_message_by_name("helloworld.HelloRequest")
        .expect("HelloRequest");
    DynamicMessage::decode(input, messages[0]).expect("a HelloRequest")
}

fn hello_reply(message: &str) -> Vec<u8> {
    let output = pool()
        .get_message_by_name("helloworld.HelloReply")
        .expect("HelloReply");
    let mut reply = DynamicMessage::new(output);
    reply.set_field_by_name("message", Field::String(message.into()));
    frame::encode(&reply.encode_to_vec())
}

fn json_of(body: &[u8]) -> Value {
    serde_json::from_slice(body).expect("a JSON body")
}

#[test]
fn the_default_mapping_and_the_annotation_become_the_grpc_call() {
    let harness = grpc_json();
    for path in ["/helloworld.Greeter/SayHello", "/v1/greeter/hello"] {
        let forwarded = harness.request(post(path)).forwarded();
        assert_eq!(forwarded.path, "/helloworld.Greeter/SayHello", "{path}");
        assert_eq!(
            forwarded.header_value("content-type"),
            Some("application/grpc")
        );
        assert_eq!(forwarded.header_value("te"), Some("trailers"));
        let sent = harness
            .request_body(&forwarded, br#"{"name":"x","times":2}"#)
            .continued();
        assert_eq!(sent.header_value(super::BINDING_NOTE), None);
        let message = hello_request(&sent.body);
        assert_eq!(
            message.get_field_by_name("name").unwrap().as_str(),
            Some("x")
        );
        assert_eq!(
            message.get_field_by_name("times").unwrap().as_i32(),
            Some(2)
        );
    }
    let goodbye = harness
        .request(post("/helloworld.Greeter/SayGoodbye"))
        .forwarded();
    assert_eq!(goodbye.path, "/helloworld.Greeter/SayGoodbye");
}

#[test]
fn the_body_is_framed_as_one_uncompressed_message() {
    let harness = grpc_json();
    let forwarded = harness.request(post("/v1/greeter/hello")).forwarded();
    let sent = harness
        .request_body(&forwarded, br#"{"name":"ab"}"#)
        .continued();
    // Field 1, length-delimited, 2 bytes: 0a 02 'a' 'b'; prefix: flag 0, length 4.
    assert_eq!(sent.body, [0, 0, 0, 0, 4, 0x0a, 2, b'a', b'b']);
    assert_eq!(sent.header_value("content-length"), Some("9"));
    let empty = harness.request_body(&forwarded, b"").continued();
    assert_eq!(empty.body, [0, 0, 0, 0, 0]);
}

#[test]
fn a_path_variable_fills_its_field() {
    let harness = grpc_json();
    let forwarded = harness
        .request(post("/v1/greeters/J%C3%BCrgen?x=1"))
        .forwarded();
    assert_eq!(forwarded.path, "/helloworld.Greeter/SayHello");
    assert_eq!(forwarded.query, None);
    let sent = harness
        .request_body(&forwarded, br#"{"times":3}"#)
        .continued();
    let message = hello_request(&sent.body);
    assert_eq!(
        message.get_field_by_name("name").unwrap().as_str(),
        Some("Jürgen")
    );
    assert_eq!(
        message.get_field_by_name("times").unwrap().as_i32(),
        Some(3)
    );
}

#[test]
fn a_binding_that_is_not_a_post_is_answered_501() {
    // A gRPC call is a POST and weir:plugin cannot change a request's method.
    let reply = grpc_json()
        .request(TestRequest::get("/v1/greeter/ann"))
        .reply();
    assert_eq!(reply.status, 501);
    assert_eq!(json_of(&reply.body)["code"], 12);
}

#[test]
fn other_requests_pass_untouched() {
    let harness = grpc_json();
    for request in [
        post("/v1/other"),
        post("/helloworld.Greeter/Nope"),
        TestRequest::get("/helloworld.Greeter/SayHello"),
        TestRequest::new("PUT", "/v1/greeter/hello"),
        TestRequest::get("/v1/greeter/a/b"),
        // A gRPC client calling the service itself.
        TestRequest::new("POST", "/helloworld.Greeter/SayHello")
            .header("content-type", "application/grpc"),
    ] {
        let path = request.path.clone();
        let forwarded = harness.request(request.clone()).forwarded();
        assert_eq!(
            (&forwarded.path, &forwarded.query, &forwarded.headers),
            (&request.path, &request.query, &request.headers),
            "{path}"
        );
        let body = harness.request_body(&forwarded, b"{}").continued();
        assert_eq!(body.body, b"{}", "{path}");
    }
}

#[test]
fn bad_json_and_unknown_fields_are_refused_with_400() {
    let harness = grpc_json();
    let forwarded = harness.request(post("/v1/greeter/hello")).forwarded();
    for body in [
        &b"{not json"[..],
        br#"{"nam":"x"}"#,
        br#"["x"]"#,
        br#"{"name":5}"#,
    ] {
        let reply = harness.request_body(&forwarded, body).responded();
        assert_eq!(reply.status, 400, "{}", String::from_utf8_lossy(body));
        let error = json_of(&reply.body);
        assert_eq!(error["code"], 3);
        assert!(error["message"].is_string(), "{error}");
    }
}

#[test]
fn a_reply_becomes_json() {
    let harness = grpc_json();
    let forwarded = harness.request(post("/v1/greeter/hello")).forwarded();
    let head = harness
        .response(&forwarded, 200, &[("content-type", "application/grpc")])
        .response();
    assert_eq!(head.header_value("content-type"), Some("application/json"));
    let headers: Vec<(&str, &str)> = head
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), std::str::from_utf8(v).unwrap()))
        .collect();
    let body = harness
        .response_body(&forwarded, 200, &headers, &hello_reply("Hello x"))
        .continued();
    assert_eq!(json_of(&body.body), json!({"message": "Hello x"}));
    assert_eq!(body.header_value("content-type"), Some("application/json"));
    assert_eq!(body.header_value(super::METHOD_NOTE), None);
}

#[test]
fn a_broken_reply_is_a_502() {
    let harness = grpc_json();
    let note = [(super::METHOD_NOTE, "helloworld.Greeter.SayHello")];
    for body in [
        &[1u8, 0, 0, 0, 0][..],
        &[0, 0, 0, 0, 9, 1],
        &[0, 0, 0, 0, 2, 0xff, 0xff],
    ] {
        let reply = harness
            .response_body(&post("/v1/greeter/hello"), 200, &note, body)
            .responded();
        assert_eq!(reply.status, 502, "{body:?}");
        assert_eq!(json_of(&reply.body)["code"], 13);
    }
}

#[test]
fn a_status_in_the_head_becomes_its_http_status() {
    let harness = grpc_json();
    let forwarded = harness.request(post("/v1/greeter/hello")).forwarded();
    let reply = harness
        .response(
            &forwarded,
            200,
            &[
                ("content-type", "application/grpc"),
                ("grpc-status", "3"),
                ("grpc-message", "name%20is%20empty"),
            ],
        )
        .response();
    assert_eq!(reply.status, 400);
    assert_eq!(
        json_of(&reply.body),
        json!({"code": 3, "message": "name is empty"})
    );
    assert_eq!(reply.header_value("content-type"), Some("application/json"));
}

#[test]
fn status_codes_map_as_grpc_gateway_maps_them() {
    let table = [
        (0, 200),
        (1, 499),
        (2, 500),
        (3, 400),
        (4, 504),
        (5, 404),
        (6, 409),
        (7, 403),
        (8, 429),
        (9, 400),
        (10, 409),
        (11, 400),
        (12, 501),
        (13, 500),
        (14, 503),
        (15, 500),
        (16, 401),
        (99, 500),
    ];
    for (code, status) in table {
        assert_eq!(http_status(code), status, "code {code}");
    }
}

#[test]
fn responses_to_other_requests_pass_untouched() {
    let harness = grpc_json();
    let forwarded = harness.request(post("/v1/other")).forwarded();
    let head = harness
        .response(
            &forwarded,
            404,
            &[("content-type", "text/plain"), ("grpc-status", "5")],
        )
        .response();
    assert_eq!(head.status, 404);
    assert_eq!(head.header_value("content-type"), Some("text/plain"));
    let body = harness
        .response_body(&forwarded, 404, &[("content-type", "text/plain")], b"nope")
        .continued();
    assert_eq!(body.body, b"nope");
}

#[test]
fn a_bad_config_is_refused() {
    let no_service = format!(
        "descriptor_set = \"{}\"\nservices = [\"helloworld.Nope\"]",
        DESCRIPTOR_SET.trim()
    );
    assert!(
        Harness::<GrpcJson>::new(&no_service)
            .unwrap_err()
            .contains("helloworld.Nope")
    );
    let not_base64 = "descriptor_set = \"!!\"\nservices = [\"helloworld.Greeter\"]";
    assert!(
        Harness::<GrpcJson>::new(not_base64)
            .unwrap_err()
            .contains("base64")
    );
    let none = format!(
        "descriptor_set = \"{}\"\nservices = []",
        DESCRIPTOR_SET.trim()
    );
    assert!(Harness::<GrpcJson>::new(&none).is_err());
}
