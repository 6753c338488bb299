//! A guest filter on raw `weir:plugin@0.3.5` bindings (the frozen `wit/0.3.5/`), for weir's
//! end-to-end test that a 0.3.5 plugin runs unchanged on a later host: a request to `/part`
//! adds a part to its cache key (`request.add-cache-key`, new in 0.3.5) and passes on, one to
//! `/too-long` sets a key of 1,025 bytes, which weir refuses by trapping the call;
//! anything else passes unchanged.

wit_bindgen::generate!({ path: "../../../wit/0.3.5", world: "filter" });

use exports::weir::plugin::http_filter::Guest;
use weir::plugin::types::{
    BodyAction, BodyChanges, BodyHookSet, HookSet, Request, RequestAction, RequestChanges,
    RequestHead, Response, ResponseAction, ResponseHead,
};

struct V035;

fn unchanged() -> RequestAction {
    RequestAction::Continue(RequestChanges {
        headers: Vec::new(),
        path: None,
    })
}

impl Guest for V035 {
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
        match request.path().as_str() {
            "/part" => request.add_cache_key("tenant-a"),
            "/too-long" => request.set_cache_key(&"k".repeat(1025)),
            _ => {}
        }
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

export!(V035);
