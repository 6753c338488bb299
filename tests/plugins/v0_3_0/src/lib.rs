//! A guest filter built against the frozen `weir:plugin@0.3.0` contract (`wit/0.3.0/`), for
//! weir's end-to-end tests: the current contract is 0.3.5, and a 0.3.0 plugin must load and
//! run unchanged (its imports served, and its exports found, by semver-compatible lookup).
//!
//! It reads the request through its handle and tags the request with its path
//! (`x-v030-path`), and the response with the status it saw (`x-v030-status`).

wit_bindgen::generate!({ path: "../../../wit/0.3.0", world: "filter" });

use exports::weir::plugin::http_filter::Guest;
use weir::plugin::types::{
    BodyAction, BodyChanges, BodyHookSet, HeaderOp, HookSet, Request, RequestAction, RequestChanges,
    RequestHead, Response, ResponseAction, ResponseHead,
};

struct V030;

fn tag_request(path: String) -> RequestAction {
    RequestAction::Continue(RequestChanges {
        headers: vec![HeaderOp::Set(("x-v030-path".into(), path.into_bytes()))],
        path: None,
    })
}

fn tag_response(status: u16) -> ResponseAction {
    ResponseAction::Continue(vec![HeaderOp::Set((
        "x-v030-status".into(),
        status.to_string().into_bytes(),
    ))])
}

fn unchanged() -> BodyAction {
    BodyAction::Continue(BodyChanges {
        headers: Vec::new(),
        body: None,
    })
}

impl Guest for V030 {
    fn hooks() -> HookSet {
        HookSet::ON_REQUEST | HookSet::ON_RESPONSE
    }

    fn configure(_config: String) -> Result<(), String> {
        Ok(())
    }

    fn on_request(request: RequestHead) -> RequestAction {
        tag_request(request.path)
    }

    fn on_response(_request: RequestHead, response: ResponseHead) -> ResponseAction {
        tag_response(response.status)
    }

    fn on_request_lazy(request: &Request) -> RequestAction {
        tag_request(request.path())
    }

    fn on_response_lazy(_request: &Request, response: &Response) -> ResponseAction {
        tag_response(response.status())
    }

    fn body_hooks() -> BodyHookSet {
        BodyHookSet::empty()
    }

    fn on_request_body(_request: RequestHead, _body: Vec<u8>) -> BodyAction {
        unchanged()
    }

    fn on_response_body(_request: RequestHead, _response: ResponseHead, _body: Vec<u8>) -> BodyAction {
        unchanged()
    }
}

export!(V030);
