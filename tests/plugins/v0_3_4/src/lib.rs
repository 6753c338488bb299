//! A guest filter on raw `weir:plugin@0.3.4` bindings (the frozen `wit/0.3.4/`), for weir's
//! end-to-end test that a 0.3.4 plugin runs unchanged on a later host: a request to
//! `/within` is answered with what `kv.increment-within` (new in 0.3.4) did to a counter
//! limited to 2 (`applied value`), one to `/swap` with whether `kv.compare-and-set` (new in
//! 0.3.4) replaced an absent key (`true` once, then `false`); anything else passes unchanged.

wit_bindgen::generate!({ path: "../../../wit/0.3.4", world: "filter" });

use exports::weir::plugin::http_filter::Guest;
use weir::plugin::kv;
use weir::plugin::types::{
    BodyAction, BodyChanges, BodyHookSet, HookSet, LocalResponse, Request, RequestAction,
    RequestChanges, RequestHead, Response, ResponseAction, ResponseHead,
};

struct V034;

fn unchanged() -> RequestAction {
    RequestAction::Continue(RequestChanges {
        headers: Vec::new(),
        path: None,
    })
}

fn text(body: String) -> RequestAction {
    RequestAction::Respond(LocalResponse {
        status: 200,
        headers: vec![("content-type".into(), b"text/plain".to_vec())],
        body: body.into_bytes(),
    })
}

impl Guest for V034 {
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
            "/within" => text(match kv::increment_within("within", 1, 2, None) {
                Ok(bounded) => format!("{} {}", bounded.applied, bounded.value),
                Err(e) => format!("kv failed: {e:?}"),
            }),
            "/swap" => text(match kv::compare_and_set("swap", None, b"mine", None) {
                Ok(set) => set.to_string(),
                Err(e) => format!("kv failed: {e:?}"),
            }),
            _ => unchanged(),
        }
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

export!(V034);
