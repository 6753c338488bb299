//! {{name}}: a weir filter. It answers GET /{{name}}/ping itself, tags every request it
//! passes on with `x-hello`, and every response with `x-plugin`.
//!
//! weir calls the lazy hooks (`on_request_lazy`, `on_response_lazy`): they get handles to
//! the request and response and read only what they ask for, one call into weir each. The
//! record forms (`on_request`, `on_response`, given whole heads) must be exported too; here
//! both forms share the decision.

wit_bindgen::generate!({ path: "wit", world: "filter" });

use exports::weir::plugin::http_filter::Guest;
use weir::plugin::log::{Level, log};
use weir::plugin::types::{
    BodyAction, BodyHookSet, HeaderOp, HookSet, LocalResponse, Request, RequestAction,
    RequestChanges, RequestHead, Response, ResponseAction, ResponseHead,
};

const NAME: &str = "{{name}}";
const PING: &str = "/{{name}}/ping";

/// The answer to a request: `ping` says whether it is `GET /{{name}}/ping`.
fn on_request(ping: bool) -> RequestAction {
    if ping {
        log(Level::Debug, "ping");
        return RequestAction::Respond(LocalResponse {
            status: 200,
            headers: vec![("content-type".into(), b"text/plain".to_vec())],
            body: b"pong".to_vec(),
        });
    }
    RequestAction::Continue(RequestChanges {
        headers: vec![HeaderOp::Set(("x-hello".into(), NAME.into()))],
        path: None,
    })
}

fn on_response() -> ResponseAction {
    ResponseAction::Continue(vec![HeaderOp::Set(("x-plugin".into(), NAME.into()))])
}

struct Plugin;

impl Guest for Plugin {
    /// The `[config]` table of {{name}}.toml, as JSON. An `Err` rejects it.
    fn configure(config: String) -> Result<(), String> {
        if config.trim_start().starts_with('{') {
            Ok(())
        } else {
            Err("expected a table".into())
        }
    }

    fn hooks() -> HookSet {
        HookSet::ON_REQUEST | HookSet::ON_RESPONSE
    }

    fn body_hooks() -> BodyHookSet {
        BodyHookSet::empty()
    }

    // What weir calls. The path is read only for a GET.
    fn on_request_lazy(request: &Request) -> RequestAction {
        on_request(request.method() == "GET" && request.path() == PING)
    }

    fn on_response_lazy(_request: &Request, _response: &Response) -> ResponseAction {
        on_response()
    }

    // The same hooks, given whole heads.
    fn on_request(request: RequestHead) -> RequestAction {
        on_request(request.method == "GET" && request.path == PING)
    }

    fn on_response(_request: RequestHead, _response: ResponseHead) -> ResponseAction {
        on_response()
    }

    // Body hooks are not declared in `body_hooks`, so weir never calls these.
    fn on_request_body(_request: RequestHead, _body: Vec<u8>) -> BodyAction {
        unreachable!("not declared")
    }

    fn on_response_body(
        _request: RequestHead,
        _response: ResponseHead,
        _body: Vec<u8>,
    ) -> BodyAction {
        unreachable!("not declared")
    }
}

export!(Plugin);
