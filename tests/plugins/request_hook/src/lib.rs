//! A guest filter on raw `weir:plugin@0.3.7` bindings (world `filter-with-request-hook`), for
//! weir's end-to-end tests of `request-hook`. Its `on-request-lazy` answers 418, so a test
//! sees at once if weir called it instead of `request-hook.on-request`, which by path:
//! - `/both`: leaves `x-order: import` and `x-import: 1` through `add-response-header-ops`,
//!   and answers with `x-order: answer` and `x-answer: 1` (the answer's come after);
//! - `/respond`: answers 403 with `x-dropped: 1` for the response (dropped: it answered);
//! - `/limit/N/M`: leaves N changes through the import and answers with M more, each
//!   setting `x-n` to its number;
//! - `/bytes/N/M`: leaves one change of `x-left` to N bytes through the import and answers
//!   with one of `x-answered` to M bytes;
//! - anything else: passes on unchanged.

wit_bindgen::generate!({ path: "../../../wit", world: "filter-with-request-hook" });

use exports::weir::plugin::http_filter::Guest;
use exports::weir::plugin::request_hook::{Guest as RequestHookGuest, RequestAnswer};
use weir::plugin::types::{
    BodyAction, BodyChanges, BodyHookSet, HeaderOp, HookSet, LocalResponse, Request, RequestAction,
    RequestChanges, RequestHead, Response, ResponseAction, ResponseHead,
};

struct RequestHook;

fn unchanged() -> RequestAction {
    RequestAction::Continue(RequestChanges {
        headers: Vec::new(),
        path: None,
    })
}

fn set(name: &str, value: &str) -> HeaderOp {
    HeaderOp::Set((name.to_owned(), value.as_bytes().to_vec()))
}

/// `count` changes, each setting `x-n` to its number.
fn numbered(count: usize) -> Vec<HeaderOp> {
    (0..count)
        .map(|i| HeaderOp::Set(("x-n".to_owned(), i.to_string().into_bytes())))
        .collect()
}

impl RequestHookGuest for RequestHook {
    fn on_request(request: &Request) -> RequestAnswer {
        let path = request.path();
        let (action, response_headers) = match path.as_str() {
            "/both" => {
                request.add_response_header_ops(&[set("x-order", "import"), set("x-import", "1")]);
                (
                    unchanged(),
                    vec![set("x-order", "answer"), set("x-answer", "1")],
                )
            }
            "/respond" => {
                let reply = LocalResponse {
                    status: 403,
                    headers: Vec::new(),
                    body: b"refused\n".to_vec(),
                };
                (RequestAction::Respond(reply), vec![set("x-dropped", "1")])
            }
            _ if path.starts_with("/bytes/") => {
                let sizes = path["/bytes/".len()..].split_once('/');
                let size = |s: &str| s.parse().unwrap_or(0);
                let (left, answered) = sizes.map_or((0, 0), |(n, m)| (size(n), size(m)));
                request.add_response_header_ops(&[HeaderOp::Set((
                    "x-left".into(),
                    vec![b'l'; left],
                ))]);
                let answer = HeaderOp::Set(("x-answered".into(), vec![b'a'; answered]));
                (unchanged(), vec![answer])
            }
            _ => match path.strip_prefix("/limit/").and_then(|s| s.split_once('/')) {
                Some((left, answered)) => {
                    let left = left.parse().unwrap_or(0);
                    let answered = answered.parse().unwrap_or(0);
                    request.add_response_header_ops(&numbered(left));
                    (unchanged(), numbered(answered))
                }
                None => (unchanged(), Vec::new()),
            },
        };
        RequestAnswer {
            action,
            response_headers,
        }
    }
}

impl Guest for RequestHook {
    fn hooks() -> HookSet {
        HookSet::ON_REQUEST
    }

    fn configure(_config: String) -> Result<(), String> {
        Ok(())
    }

    fn on_request(_request: RequestHead) -> RequestAction {
        unchanged()
    }

    fn on_response(_request: RequestHead, _response: ResponseHead) -> ResponseAction {
        ResponseAction::Continue(Vec::new())
    }

    fn on_request_lazy(_request: &Request) -> RequestAction {
        RequestAction::Respond(LocalResponse {
            status: 418,
            headers: Vec::new(),
            body: b"on-request-lazy was called\n".to_vec(),
        })
    }

    fn on_response_lazy(_request: &Request, _response: &Response) -> ResponseAction {
        ResponseAction::Continue(Vec::new())
    }

    fn body_hooks() -> BodyHookSet {
        BodyHookSet::empty()
    }

    fn on_request_body(_request: RequestHead, _body: Vec<u8>) -> BodyAction {
        BodyAction::Continue(BodyChanges {
            headers: Vec::new(),
            body: None,
        })
    }

    fn on_response_body(
        _request: RequestHead,
        _response: ResponseHead,
        _body: Vec<u8>,
    ) -> BodyAction {
        BodyAction::Continue(BodyChanges {
            headers: Vec::new(),
            body: None,
        })
    }
}

export!(RequestHook);
