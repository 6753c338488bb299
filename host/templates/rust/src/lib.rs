//! {{name}}: a weir filter. It answers GET /{{name}}/ping itself, tags every request it
//! passes on with `x-hello`, and every response with `x-plugin`.

wit_bindgen::generate!({ path: "wit", world: "filter" });

use exports::weir::plugin::http_filter::Guest;
use weir::plugin::log::{Level, log};
use weir::plugin::types::{
    BodyAction, BodyHookSet, HeaderOp, HookSet, LocalResponse, RequestAction, RequestChanges,
    RequestHead, ResponseAction, ResponseHead,
};

const NAME: &str = "{{name}}";

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

    fn on_request(request: RequestHead) -> RequestAction {
        if request.method == "GET" && request.path == format!("/{NAME}/ping") {
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

    fn on_response(_request: RequestHead, _response: ResponseHead) -> ResponseAction {
        ResponseAction::Continue(vec![HeaderOp::Set(("x-plugin".into(), NAME.into()))])
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
