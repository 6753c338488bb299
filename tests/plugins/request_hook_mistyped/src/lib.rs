//! A guest filter that exports `weir:plugin/request-hook@0.3.7` with `on-request` answering
//! a bare `request-action` instead of a `request-answer` (its own `wit/`, a copy of weir's
//! with that one line changed): weir must refuse it at load with an error naming the
//! function, not call it with the wrong type nor quietly fall back to `on-request-lazy`.

wit_bindgen::generate!({ path: "wit", world: "mistyped" });

use exports::weir::plugin::http_filter::Guest;
use exports::weir::plugin::request_hook::Guest as RequestHookGuest;
use weir::plugin::types::{
    BodyAction, BodyChanges, BodyHookSet, HookSet, Request, RequestAction, RequestChanges,
    RequestHead, Response, ResponseAction, ResponseHead,
};

struct Mistyped;

fn unchanged() -> RequestAction {
    RequestAction::Continue(RequestChanges {
        headers: Vec::new(),
        path: None,
    })
}

impl RequestHookGuest for Mistyped {
    fn on_request(_request: &Request) -> RequestAction {
        unchanged()
    }
}

impl Guest for Mistyped {
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

export!(Mistyped);
