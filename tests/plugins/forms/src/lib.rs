//! A guest filter on raw bindings of the current contract (`wit/`) whose two forms of each
//! head hook say which ran: the record forms (`on-request`, `on-response`, given whole heads)
//! set `x-form: record`, the lazy ones (lent handles) `x-form: lazy`, on the request sent
//! upstream and on the response. For weir's end-to-end test of `whole_heads`.

wit_bindgen::generate!({ path: "../../../wit", world: "filter" });

use exports::weir::plugin::http_filter::Guest;
use weir::plugin::types::{
    BodyAction, BodyChanges, BodyHookSet, HeaderOp, HookSet, Request, RequestAction,
    RequestChanges, RequestHead, Response, ResponseAction, ResponseHead,
};

struct Forms;

fn form(which: &str) -> HeaderOp {
    HeaderOp::Set(("x-form".to_owned(), which.as_bytes().to_vec()))
}

fn request_action(which: &str) -> RequestAction {
    RequestAction::Continue(RequestChanges {
        headers: vec![form(which)],
        path: None,
    })
}

fn unchanged_body() -> BodyAction {
    BodyAction::Continue(BodyChanges {
        headers: Vec::new(),
        body: None,
    })
}

impl Guest for Forms {
    fn hooks() -> HookSet {
        HookSet::ON_REQUEST | HookSet::ON_RESPONSE
    }

    fn configure(_config: String) -> Result<(), String> {
        Ok(())
    }

    fn on_request(_request: RequestHead) -> RequestAction {
        request_action("record")
    }

    fn on_response(_request: RequestHead, _response: ResponseHead) -> ResponseAction {
        ResponseAction::Continue(vec![form("record")])
    }

    fn on_request_lazy(_request: &Request) -> RequestAction {
        request_action("lazy")
    }

    fn on_response_lazy(_request: &Request, _response: &Response) -> ResponseAction {
        ResponseAction::Continue(vec![form("lazy")])
    }

    fn body_hooks() -> BodyHookSet {
        BodyHookSet::empty()
    }

    fn on_request_body(_request: RequestHead, _body: Vec<u8>) -> BodyAction {
        unchanged_body()
    }

    fn on_response_body(
        _request: RequestHead,
        _response: ResponseHead,
        _body: Vec<u8>,
    ) -> BodyAction {
        unchanged_body()
    }
}

export!(Forms);
