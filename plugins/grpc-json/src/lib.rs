//! `grpc-json`: REST clients call a gRPC service. The config's `FileDescriptorSet` describes
//! the services; each method answers `POST /package.Service/Method` and the paths its
//! `google.api.http` annotation names (`bindings.rs`). A request that matches is turned into
//! a unary gRPC call and its answer back into JSON (`frame.rs`); any other request passes
//! untouched.
//!
//! The work is split over four hooks, because weir applies a path change only in the head
//! hook and hands bodies only to the body hooks:
//! - `on_request` matches the method and path and rewrites the head to a gRPC call (path
//!   `/package.Service/Method`, method `POST`, `content-type: application/grpc`,
//!   `te: trailers`). A binding without a body (`get`, `delete`), or a request without one,
//!   is turned into the input message here, from the path variables and the query, and
//!   given to weir as the request's body (`set_body`, weir:plugin 0.3.6). For a request
//!   whose JSON body makes the message, it leaves a request header for `on_request_body`
//!   (which binding, the path variables, the query). Either way it leaves a response header
//!   for the response hooks (which method). Both notes are removed before they leave weir;
//! - `on_request_body` turns the JSON body (and the path variables and query) into the
//!   method's input message, framed as one gRPC message, or answers 400;
//! - `on_response` reads `grpc-status` if the upstream put it in the head (a trailers-only
//!   answer: the call failed before any message) and answers with its HTTP status and a JSON
//!   error; otherwise it marks the response JSON;
//! - `on_response_body` reads the call's status from the trailers (weir:plugin 0.3.6), so a
//!   status sent after a message is an error too, and turns the gRPC message into JSON.

#![forbid(unsafe_code)]

mod bindings;
mod frame;
mod query;

use base64::Engine as _;
use prost_reflect::{DescriptorPool, DynamicMessage, MethodDescriptor};
use serde_json::{Map, Value, json};
use weir_plugin::{Action, Body, Filter, Hooks, Reply, Request, Response};

use bindings::{Binding, Template};

/// The request header `on_request` leaves for `on_request_body`: the binding's index, then
/// the raw path variables, `/`-separated, then `?` and the query when the body fills one
/// field (the query fills others). Removed before the request goes upstream.
const BINDING_NOTE: &str = "x-weir-grpc-json-binding";
/// The response header `on_request` leaves for the response hooks: the method's full name.
/// Removed before the response goes to the client.
const METHOD_NOTE: &str = "x-weir-grpc-json-method";

/// The `[config]` table.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// A `FileDescriptorSet` (protobuf, base64), with its imports
    /// (`protoc --include_imports --descriptor_set_out=...`).
    pub descriptor_set: String,
    /// The services served, by full name (`helloworld.Greeter`).
    pub services: Vec<String>,
}

/// The filter.
#[derive(Debug)]
pub struct GrpcJson {
    bindings: Vec<Binding>,
    pool: DescriptorPool,
}

impl Filter for GrpcJson {
    type Config = Config;

    fn new(config: Config) -> Result<GrpcJson, String> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(config.descriptor_set.trim())
            .map_err(|e| format!("descriptor_set is not base64: {e}"))?;
        let pool = DescriptorPool::decode(bytes.as_slice())
            .map_err(|e| format!("descriptor_set is not a valid FileDescriptorSet: {e}"))?;
        if config.services.is_empty() {
            return Err("services: name at least one service".into());
        }
        let mut all = Vec::new();
        for name in &config.services {
            let service = pool
                .get_service_by_name(name)
                .ok_or_else(|| format!("services: {name:?} is not in the descriptor set"))?;
            for method in service.methods() {
                all.extend(bindings::of(&pool, &method)?);
            }
        }
        Ok(GrpcJson {
            bindings: all,
            pool,
        })
    }

    fn hooks(&self) -> Hooks {
        Hooks {
            on_request: true,
            on_response: true,
            on_request_body: true,
            on_response_body: true,
        }
    }

    fn on_request(&self, request: &mut Request) -> Action {
        // Notes are ours alone: never trust one a client sent.
        request.remove_header(BINDING_NOTE);
        request.remove_response_header(METHOD_NOTE);
        // A gRPC client calling the service itself passes through.
        if request
            .header("content-type")
            .is_some_and(|t| t.starts_with("application/grpc"))
        {
            return Action::Continue;
        }
        let found = self.bindings.iter().enumerate().find_map(|(i, b)| {
            let variables = b.matches(request.method(), request.path())?;
            Some((i, b, variables))
        });
        let Some((index, binding, variables)) = found else {
            return Action::Continue;
        };
        // Owned: the head is rewritten below.
        let variables: Vec<String> = variables.into_iter().map(str::to_owned).collect();
        let variables: Vec<&str> = variables.iter().map(String::as_str).collect();
        let query = request.query().map(str::to_owned);
        request.set_response_header(METHOD_NOTE, binding.method.full_name());
        request.set_path(grpc_path(&binding.method));
        request.set_query(None);
        request.set_header("content-type", "application/grpc");
        request.set_header("te", "trailers");
        request.remove_header("content-encoding");
        // A gRPC call is a POST: a GET, PUT, DELETE or PATCH binding's request is made one.
        if request.method() != "POST" {
            request.set_method("POST");
        }
        if binding.body.is_none() || declares_no_body(request) {
            // Nothing for `on_request_body` to read: the message is made here, from the path
            // and query, and sent as the request's body (any body the client sent replaced,
            // as grpc-gateway ignores a body a binding does not take).
            return match input_message(binding, &variables, query.as_deref(), b"") {
                Ok(message) => {
                    request.set_body(frame::encode(&prost::Message::encode_to_vec(&message)));
                    Action::Continue
                }
                Err(why) => error_reply(3, &why),
            };
        }
        let mut note = index.to_string();
        for raw in variables {
            note.push('/');
            note.push_str(raw);
        }
        if let Some(query) = query.filter(|_| takes_query(binding)) {
            note.push('?');
            note.push_str(&query);
        }
        request.set_header(BINDING_NOTE, note);
        Action::Continue
    }

    /// JSON → the method's input message, as one gRPC message. A body or path variable the
    /// message cannot take is refused with 400, before the upstream sees anything.
    fn on_request_body(&self, request: &mut Request, body: &mut Body) -> Action {
        let Some(note) = request.header(BINDING_NOTE).map(str::to_owned) else {
            return Action::Continue;
        };
        request.remove_header(BINDING_NOTE);
        let (note, query) = match note.split_once('?') {
            Some((note, query)) => (note, Some(query)),
            None => (note.as_str(), None),
        };
        let mut parts = note.split('/');
        let binding = parts
            .next()
            .and_then(|i| i.parse::<usize>().ok())
            .and_then(|i| self.bindings.get(i));
        let Some(binding) = binding else {
            return error_reply(13, "grpc-json: lost track of the request's binding");
        };
        let variables: Vec<&str> = parts.collect();
        match input_message(binding, &variables, query, body.bytes()) {
            Ok(message) => {
                body.replace(frame::encode(&prost::Message::encode_to_vec(&message)));
                Action::Continue
            }
            Err(why) => error_reply(3, &why),
        }
    }

    fn on_response(&self, _: &Request, response: &mut Response) -> Action {
        if response.header(METHOD_NOTE).is_none() {
            return Action::Continue;
        }
        if let Some(code) = response.header("grpc-status") {
            let code: u32 = code.trim().parse().unwrap_or(2);
            if code != 0 {
                let message = response
                    .header("grpc-message")
                    .map(percent_decode)
                    .unwrap_or_default();
                return error_reply(code, &message);
            }
        }
        let is_grpc = response
            .header("content-type")
            .is_some_and(|t| t.starts_with("application/grpc"));
        if !is_grpc {
            // Not the service's answer (weir's own 502, say): it goes on as it is.
            response.remove_header(METHOD_NOTE);
            return Action::Continue;
        }
        response.set_header("content-type", "application/json");
        Action::Continue
    }

    /// The gRPC message → JSON. A body that is not one uncompressed message of the method's
    /// output type becomes a 502 with a JSON error.
    fn on_response_body(&self, _: &Request, response: &mut Response, body: &mut Body) -> Action {
        let Some(name) = response.header(METHOD_NOTE).map(str::to_owned) else {
            return Action::Continue;
        };
        response.remove_header(METHOD_NOTE);
        let Some(method) = self.method(&name) else {
            return error_reply(13, "grpc-json: lost track of the response's method");
        };
        // The call's status: in the trailers, after the messages, unless the server sent a
        // trailers-only answer (its status in the head, read by `on_response` if not OK).
        let status = response
            .trailer("grpc-status")
            .map(|code| (code.to_owned(), response.trailer("grpc-message")))
            .or_else(|| {
                let code = response.header("grpc-status")?;
                Some((code.to_owned(), response.header("grpc-message")))
            });
        let Some((code, message)) = status else {
            return bad_gateway("the call ended without a grpc-status (cut off?)");
        };
        let code: u32 = code.trim().parse().unwrap_or(2);
        if code != 0 {
            let message = message.map(percent_decode).unwrap_or_default();
            return error_reply(code, &message);
        }
        let output = method.output();
        let messages = match frame::decode_all(body.bytes()) {
            Ok(messages) => messages,
            Err(why) => return bad_gateway(&why),
        };
        let mut values = Vec::with_capacity(messages.len());
        for bytes in messages {
            match DynamicMessage::decode(output.clone(), bytes) {
                Ok(message) => match serde_json::to_value(&message) {
                    Ok(value) => values.push(value),
                    Err(e) => return bad_gateway(&format!("the answer has no JSON form: {e}")),
                },
                Err(e) => {
                    return bad_gateway(&format!(
                        "the answer is not a {}: {e}",
                        output.full_name()
                    ));
                }
            }
        }
        // A unary call has one message; none (a trailers-only OK) is the empty message; a
        // server stream's messages come as an array.
        let value = match values.len() {
            0 => Value::Object(Map::new()),
            1 => values.remove(0),
            _ => Value::Array(values),
        };
        response.set_header("content-type", "application/json");
        if let Err(e) = body.set_json(&value) {
            return bad_gateway(&format!("cannot write the answer as JSON: {e}"));
        }
        Action::Continue
    }
}

impl GrpcJson {
    fn method(&self, full_name: &str) -> Option<MethodDescriptor> {
        let (service, method) = full_name.rsplit_once('.')?;
        self.pool
            .get_service_by_name(service)?
            .methods()
            .find(|m| m.name() == method)
    }
}

/// `/package.Service/Method`, the path a gRPC call is made on.
fn grpc_path(method: &MethodDescriptor) -> String {
    format!("/{}/{}", method.parent_service().full_name(), method.name())
}

/// Whether the request says it has no body: `content-length: 0`, or neither
/// `content-length` nor `transfer-encoding` (HTTP/1.1's rule for a request, RFC 9112 §6.3;
/// over HTTP/2 a client sending a body without `content-length` is taken as bodiless, which
/// curl and browsers never are).
fn declares_no_body(request: &Request) -> bool {
    match request.header("content-length") {
        Some(length) => length.trim() == "0",
        None => request.header("transfer-encoding").is_none(),
    }
}

/// Whether the query fills fields of the message: when the body is not the whole message
/// (`google.api.http`: the fields neither the path nor the body binds).
fn takes_query(binding: &Binding) -> bool {
    binding.body.as_deref() != Some("*")
}

/// The method's input message from the request body, the query (when the binding takes
/// it) and the path variables (raw, still percent-encoded, in the template's order), by the
/// protobuf JSON mapping; the path wins over the query. An unknown field is an error.
fn input_message(
    binding: &Binding,
    variables: &[&str],
    query: Option<&str>,
    body: &[u8],
) -> Result<DynamicMessage, String> {
    let text = std::str::from_utf8(body).map_err(|_| "the body is not UTF-8".to_owned())?;
    let mut root = match binding.body.as_deref() {
        // No body in this binding: whatever came is ignored, as grpc-gateway does.
        None => Map::new(),
        Some(_) if text.trim().is_empty() => Map::new(),
        Some(field) => {
            let value: Value = serde_json::from_str(text)
                .map_err(|e| format!("the body is not valid JSON: {e}"))?;
            if field == "*" {
                match value {
                    Value::Object(map) => map,
                    _ => return Err("the body must be a JSON object".into()),
                }
            } else {
                let mut map = Map::new();
                map.insert(field.to_owned(), value);
                map
            }
        }
    };
    if let Some(query) = query.filter(|_| takes_query(binding)) {
        query::fill(&mut root, &binding.method.input(), query)?;
    }
    let Template {
        variables: names, ..
    } = &binding.template;
    for (path, raw) in names.iter().zip(variables) {
        set_path(&mut root, path, Value::String(percent_decode(raw)))?;
    }
    let text = Value::Object(root).to_string();
    let mut deserializer = serde_json::Deserializer::from_str(&text);
    let message =
        DynamicMessage::deserialize(binding.method.input(), &mut deserializer).map_err(|e| {
            format!(
                "the body does not fit {}: {e}",
                binding.method.input().full_name()
            )
        })?;
    deserializer
        .end()
        .map_err(|e| format!("the body is not valid JSON: {e}"))?;
    Ok(message)
}

/// Sets `value` at the dotted field path `path` in `root`, making objects on the way.
fn set_path(root: &mut Map<String, Value>, path: &str, value: Value) -> Result<(), String> {
    let mut fields = path.split('.').peekable();
    let mut map = root;
    while let Some(field) = fields.next() {
        if fields.peek().is_none() {
            map.insert(field.to_owned(), value);
            return Ok(());
        }
        let next = map
            .entry(field.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        map = next
            .as_object_mut()
            .ok_or_else(|| format!("{field} is set in the body and the path"))?;
    }
    Ok(())
}

/// A JSON error, `{"code": N, "message": "..."}`, with the HTTP status of gRPC code `code`.
fn error_reply(code: u32, message: &str) -> Action {
    Reply::json(
        http_status(code),
        &json!({ "code": code, "message": message }),
    )
    .into()
}

/// The upstream's answer could not be read: 502, with gRPC's INTERNAL code.
fn bad_gateway(why: &str) -> Action {
    weir_plugin::log::warn!("grpc-json: {why}");
    Reply::json(502, &json!({ "code": 13, "message": why })).into()
}

/// The HTTP status for a gRPC status code, as grpc-gateway maps them.
pub fn http_status(code: u32) -> u16 {
    match code {
        0 => 200,
        1 => 499,          // CANCELLED
        3 | 9 | 11 => 400, // INVALID_ARGUMENT, FAILED_PRECONDITION, OUT_OF_RANGE
        4 => 504,          // DEADLINE_EXCEEDED
        5 => 404,          // NOT_FOUND
        6 | 10 => 409,     // ALREADY_EXISTS, ABORTED
        7 => 403,          // PERMISSION_DENIED
        8 => 429,          // RESOURCE_EXHAUSTED
        12 => 501,         // UNIMPLEMENTED
        14 => 503,         // UNAVAILABLE
        16 => 401,         // UNAUTHENTICATED
        _ => 500,          // UNKNOWN, INTERNAL, DATA_LOSS, and codes gRPC lacks
    }
}

/// `%XX` escapes decoded (`grpc-message` and path variables are percent-encoded); anything
/// not UTF-8 afterwards is replaced.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

weir_plugin::export_filter!(GrpcJson);

#[cfg(test)]
mod tests;
