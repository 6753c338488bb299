//! A guest filter on raw `weir:plugin@0.3.6` bindings (the frozen `wit/0.3.6/`), for weir's
//! end-to-end test that a 0.3.6 plugin runs unchanged on a later host: built before
//! `request-hook` (0.3.7), it leaves a header for the response the way every 0.3.1 to 0.3.6
//! filter does, through `request.add-response-header-ops`, on every request it passes on.

wit_bindgen::generate!({ path: "../../../wit/0.3.6", world: "filter" });

use exports::weir::plugin::http_filter::Guest;
use weir::plugin::types::{
    BodyAction, BodyChanges, BodyHookSet, HeaderOp, HookSet, Request, RequestAction,
    RequestChanges, RequestHead, Response, ResponseAction, ResponseHead,
};

struct V036;

fn unchanged() -> RequestAction {
    RequestAction::Continue(RequestChanges {
        headers: Vec::new(),
        path: None,
    })
}

impl Guest for V036 {
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

    fn on_request_lazy(request: &Request) -> RequestAction {
        request.add_response_header_ops(&[HeaderOp::Set(("x-left".to_owned(), b"0.3.6".to_vec()))]);
        unchanged()
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

export!(V036);
