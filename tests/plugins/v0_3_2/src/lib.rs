//! A guest filter on raw `weir:plugin@0.3.2` bindings (the frozen `wit/0.3.2/`), for weir's end-to-end test of
//! `request.tls()`: a request to `/tls` is answered by the plugin with what the call told it,
//! `VERSION SNI SUBJECT` (`-` for what is absent), or `plain` for a client without TLS;
//! anything else passes unchanged.

wit_bindgen::generate!({ path: "../../../wit/0.3.2", world: "filter" });

use exports::weir::plugin::http_filter::Guest;
use weir::plugin::types::{
    BodyAction, BodyChanges, BodyHookSet, HookSet, LocalResponse, Request, RequestAction,
    RequestChanges, RequestHead, Response, ResponseAction, ResponseHead,
};

struct V032;

fn unchanged() -> RequestAction {
    RequestAction::Continue(RequestChanges {
        headers: Vec::new(),
        path: None,
    })
}

impl Guest for V032 {
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
        if request.path() != "/tls" {
            return unchanged();
        }
        let text = match request.tls() {
            None => "plain".to_owned(),
            Some(tls) => format!(
                "{} {} {}",
                tls.version,
                tls.server_name.as_deref().unwrap_or("-"),
                tls.client_subject.as_deref().unwrap_or("-"),
            ),
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

export!(V032);
