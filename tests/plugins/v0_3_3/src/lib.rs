//! A guest filter on raw `weir:plugin@0.3.3` bindings (the frozen `wit/0.3.3/`), for weir's
//! end-to-end test that a 0.3.3 plugin runs unchanged on a later host: a request to `/count`
//! is answered with the value of a `kv` counter it increments (the host's `kv` became async
//! in 0.3.4 for its Redis store; the 0.3.3 import must still reach it) and counted in a
//! metric it declared (`metrics`, new in 0.3.3); anything else passes unchanged.

wit_bindgen::generate!({ path: "../../../wit/0.3.3", world: "filter" });

use std::cell::Cell;

use exports::weir::plugin::http_filter::Guest;
use weir::plugin::types::{
    BodyAction, BodyChanges, BodyHookSet, HookSet, LocalResponse, Request, RequestAction,
    RequestChanges, RequestHead, Response, ResponseAction, ResponseHead,
};
use weir::plugin::{kv, metrics};

struct V033;

thread_local! {
    /// The `counted` counter's handle, declared in `configure`.
    static COUNTED: Cell<Option<u32>> = const { Cell::new(None) };
}

fn unchanged() -> RequestAction {
    RequestAction::Continue(RequestChanges {
        headers: Vec::new(),
        path: None,
    })
}

impl Guest for V033 {
    fn hooks() -> HookSet {
        HookSet::ON_REQUEST
    }

    fn configure(_config: String) -> Result<(), String> {
        let handle = metrics::declare(
            "counted",
            "Requests to /count.",
            metrics::Kind::Counter,
            &[],
            None,
        )?;
        COUNTED.with(|counted| counted.set(Some(handle)));
        Ok(())
    }

    fn on_request(_request: RequestHead) -> RequestAction {
        unchanged()
    }

    fn on_response(_request: RequestHead, _response: ResponseHead) -> ResponseAction {
        ResponseAction::Continue(Vec::new())
    }

    fn on_request_lazy(request: &Request) -> RequestAction {
        if request.path() != "/count" {
            return unchanged();
        }
        if let Some(handle) = COUNTED.with(Cell::get) {
            metrics::counter_add(handle, &[], 1);
        }
        let text = match kv::increment("count", 1, None) {
            Ok(n) => n.to_string(),
            Err(e) => format!("kv failed: {e:?}"),
        };
        RequestAction::Respond(LocalResponse {
            status: 200,
            headers: vec![("content-type".into(), b"text/plain".to_vec())],
            body: text.into_bytes(),
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

    fn on_response_body(_request: RequestHead, _response: ResponseHead, _body: Vec<u8>) -> BodyAction {
        BodyAction::Continue(BodyChanges {
            headers: Vec::new(),
            body: None,
        })
    }
}

export!(V033);
