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

pub(crate) fn pool() -> DescriptorPool {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(DESCRIPTOR_SET.trim())
        .expect("base64");
    DescriptorPool::decode(bytes.as_slice()).expect("descriptor set")
}

/// A REST client's POST with a JSON body (its length says it has one; the harness is given
/// the body itself by each test).
fn post(path: &str) -> TestRequest {
    TestRequest::new("POST", path)
        .header("content-type", "application/json")
        .header("content-length", "13")
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

/// The input message a request hook made (`set_body`) of a bodiless binding's request.
fn made_here(forwarded: &TestRequest, name: &str) -> DynamicMessage {
    assert_eq!(forwarded.method, "POST", "a gRPC call is a POST");
    assert_eq!(
        forwarded.header_value("content-type"),
        Some("application/grpc")
    );
    assert_eq!(forwarded.header_value(super::BINDING_NOTE), None);
    let framed = forwarded
        .body
        .as_deref()
        .expect("a body made in on_request");
    let messages = frame::decode_all(framed).expect("framed");
    assert_eq!(messages.len(), 1);
    let input = pool().get_message_by_name(name).expect("the input type");
    DynamicMessage::decode(input, messages[0]).expect("the input message")
}

#[test]
fn a_get_binding_becomes_a_post_with_the_path_and_query_in_the_message() {
    let harness = grpc_json();
    let forwarded = harness
        .request(TestRequest::get("/v1/greeter/J%C3%BCrgen/hellos?times=2"))
        .forwarded();
    assert_eq!(forwarded.path, "/helloworld.Greeter/StreamHellos");
    assert_eq!(forwarded.query, None);
    let message = made_here(&forwarded, "helloworld.HelloRequest");
    assert_eq!(
        message.get_field_by_name("name").unwrap().as_str(),
        Some("Jürgen")
    );
    assert_eq!(
        message.get_field_by_name("times").unwrap().as_i32(),
        Some(2)
    );
    // The path wins over the query for a field both name.
    let forwarded = harness
        .request(TestRequest::get("/v1/greeter/ann?name=bob"))
        .forwarded();
    let message = made_here(&forwarded, "helloworld.HelloRequest");
    assert_eq!(
        message.get_field_by_name("name").unwrap().as_str(),
        Some("ann")
    );
}

#[test]
fn a_query_parameter_the_message_lacks_is_refused_with_400() {
    let reply = grpc_json()
        .request(TestRequest::get("/v1/greeter/ann?nope=1"))
        .reply();
    assert_eq!(reply.status, 400);
    let error = json_of(&reply.body);
    assert_eq!(error["code"], 3);
    assert!(
        error["message"].as_str().unwrap().contains("nope"),
        "{error}"
    );
}

#[test]
fn a_delete_binding_needs_no_body() {
    // A body the binding does not take is not read: the message is the path's.
    let forwarded = grpc_json()
        .request(TestRequest::new("DELETE", "/v1/greetings/ann").header("content-length", "2"))
        .forwarded();
    assert_eq!(forwarded.path, "/helloworld.Greeter/DeleteGreeting");
    let message = made_here(&forwarded, "helloworld.HelloRequest");
    assert_eq!(
        message.get_field_by_name("name").unwrap().as_str(),
        Some("ann")
    );
}

#[test]
fn put_and_patch_take_a_named_field_or_the_whole_message_from_the_body() {
    let harness = grpc_json();
    // PUT: the body is the `greeting` field, the query the other fields.
    let forwarded = harness
        .request(
            TestRequest::new("PUT", "/v1/greetings/ann?tags=a&tags=b")
                .header("content-type", "application/json")
                .header("content-length", "29"),
        )
        .forwarded();
    assert_eq!(forwarded.method, "POST");
    assert_eq!(forwarded.path, "/helloworld.Greeter/SetGreeting");
    assert_eq!(forwarded.body, None, "the client's body makes the message");
    let sent = harness
        .request_body(&forwarded, br#"{"text":"hi","shout":true}"#)
        .continued();
    let input = pool()
        .get_message_by_name("helloworld.SetGreetingRequest")
        .expect("SetGreetingRequest");
    let messages = frame::decode_all(&sent.body).expect("framed");
    let message = DynamicMessage::decode(input.clone(), messages[0]).expect("a request");
    let json = serde_json::to_value(&message).expect("JSON");
    assert_eq!(
        json,
        json!({"name": "ann", "greeting": {"text": "hi", "shout": true}, "tags": ["a", "b"]})
    );
    // PATCH: the body is the whole message (the query is not read), the path its name.
    let forwarded = harness
        .request(
            TestRequest::new("PATCH", "/v1/greetings/ann?tags=ignored")
                .header("content-length", "40"),
        )
        .forwarded();
    let sent = harness
        .request_body(&forwarded, br#"{"greeting":{"text":"yo"},"tags":["x"]}"#)
        .continued();
    let messages = frame::decode_all(&sent.body).expect("framed");
    let message = DynamicMessage::decode(input, messages[0]).expect("a request");
    assert_eq!(
        serde_json::to_value(&message).expect("JSON"),
        json!({"name": "ann", "greeting": {"text": "yo"}, "tags": ["x"]})
    );
}

#[test]
fn a_put_without_a_body_is_made_of_the_path_and_query() {
    for request in [
        TestRequest::new("PUT", "/v1/greetings/ann?tags=t"),
        TestRequest::new("PUT", "/v1/greetings/ann?tags=t").header("content-length", "0"),
    ] {
        let forwarded = grpc_json().request(request).forwarded();
        let message = made_here(&forwarded, "helloworld.SetGreetingRequest");
        assert_eq!(
            serde_json::to_value(&message).expect("JSON"),
            json!({"name": "ann", "tags": ["t"]})
        );
    }
}

#[test]
fn other_requests_pass_untouched() {
    let harness = grpc_json();
    for request in [
        post("/v1/other"),
        post("/helloworld.Greeter/Nope"),
        TestRequest::get("/helloworld.Greeter/SayHello"),
        TestRequest::new("PUT", "/v1/greeter/hello"),
        TestRequest::new("DELETE", "/v1/greeter/ann"),
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
    let ok = [("grpc-status", "0")];
    let body = harness
        .response_body_with_trailers(&forwarded, 200, &headers, &hello_reply("Hello x"), &ok)
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
        let ok = [("grpc-status", "0")];
        let reply = harness
            .response_body_with_trailers(&post("/v1/greeter/hello"), 200, &note, body, &ok)
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

/// A status the server sends in the trailers after a message (a server stream that broke)
/// is the answer, not the message before it; a call without any status was cut off.
#[test]
fn a_status_in_the_trailers_after_a_message_becomes_its_http_status() {
    let harness = grpc_json();
    let note = [
        (super::METHOD_NOTE, "helloworld.Greeter.StreamHellos"),
        ("content-type", "application/json"),
    ];
    let request = TestRequest::get("/v1/greeter/broken/hellos");
    let failed = [("grpc-status", "14"), ("grpc-message", "stream%20broke")];
    let reply = harness
        .response_body_with_trailers(
            &request,
            200,
            &note,
            &hello_reply("Hello broken #1"),
            &failed,
        )
        .responded();
    assert_eq!(reply.status, 503);
    assert_eq!(
        json_of(&reply.body),
        json!({"code": 14, "message": "stream broke"})
    );
    assert_eq!(reply.header_value("content-type"), Some("application/json"));
    // Two messages and OK: an array.
    let two = [hello_reply("a"), hello_reply("b")].concat();
    let ok = harness
        .response_body_with_trailers(&request, 200, &note, &two, &[("grpc-status", "0")])
        .continued();
    assert_eq!(
        json_of(&ok.body),
        json!([{"message": "a"}, {"message": "b"}])
    );
    // No status anywhere: the call did not end as gRPC calls end.
    let cut = harness
        .response_body(&request, 200, &note, &hello_reply("a"))
        .responded();
    assert_eq!(cut.status, 502);
    assert_eq!(json_of(&cut.body)["code"], 13);
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
