//! A guest filter on raw `weir:plugin@0.3.1` bindings (the frozen `wit/0.3.1/`), for weir's end-to-end tests of
//! `request.add-response-header-ops` where the Rust SDK cannot reach: changes left during
//! `on-response-lazy` (the SDK's `on_response` gets the request read-only). By path:
//! - `/left-order` — `on-request-lazy` leaves `x-order: left-by-request`; `on-response-lazy`
//!   reads `x-order` from the response into `x-seen`, returns `x-order: own` (appended) and
//!   leaves `x-order: left-by-response` (appended). weir's order: the request hook's leftovers
//!   before the response hook, its own changes, then what it left;
//! - `/left-then-reply` — leaves `x-order: left-by-request`, then answers 403 itself: a
//!   reply drops what the call left;
//! - `/too-many` — leaves 257 changes in one call (the limit is 256): the call traps.

wit_bindgen::generate!({ path: "../../../wit/0.3.1", world: "filter" });

use exports::weir::plugin::http_filter::Guest;
use weir::plugin::types::{
    BodyAction, BodyChanges, BodyHookSet, HeaderOp, HookSet, LocalResponse, Request, RequestAction,
    RequestChanges, RequestHead, Response, ResponseAction, ResponseHead,
};

struct V031;

fn set(name: &str, value: &str) -> HeaderOp {
    HeaderOp::Set((name.into(), value.as_bytes().to_vec()))
}

fn append(name: &str, value: &str) -> HeaderOp {
    HeaderOp::Append((name.into(), value.as_bytes().to_vec()))
}

fn unchanged() -> RequestAction {
    RequestAction::Continue(RequestChanges {
        headers: Vec::new(),
        path: None,
    })
}

impl Guest for V031 {
    fn hooks() -> HookSet {
        HookSet::ON_REQUEST | HookSet::ON_RESPONSE
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

    fn on_request_lazy(request: &Request) -> RequestAction {
        match request.path().as_str() {
            "/left-order" => {
                request.add_response_header_ops(&[set("x-order", "left-by-request")]);
                unchanged()
            }
            "/left-then-reply" => {
                request.add_response_header_ops(&[set("x-order", "left-by-request")]);
                RequestAction::Respond(LocalResponse {
                    status: 403,
                    headers: Vec::new(),
                    body: b"no\n".to_vec(),
                })
            }
            "/too-many" => {
                let ops: Vec<HeaderOp> = (0..257).map(|i| append("x-many", &i.to_string())).collect();
                request.add_response_header_ops(&ops);
                unchanged()
            }
            _ => unchanged(),
        }
    }

    fn on_response_lazy(request: &Request, response: &Response) -> ResponseAction {
        if request.path() != "/left-order" {
            return ResponseAction::Continue(Vec::new());
        }
        let seen = response
            .header("x-order")
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .unwrap_or_else(|| "none".into());
        request.add_response_header_ops(&[append("x-order", "left-by-response")]);
        ResponseAction::Continue(vec![append("x-order", "own"), set("x-seen", &seen)])
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

    fn on_response_body(_request: RequestHead, _response: ResponseHead, _body: Vec<u8>) -> BodyAction {
        BodyAction::Continue(BodyChanges {
            headers: Vec::new(),
            body: None,
        })
    }
}

export!(V031);
