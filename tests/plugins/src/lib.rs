//! A guest filter for weir's end-to-end tests. What it does depends on the request path:
//! - `/deny` — answers 403 itself;
//! - `/trap` — panics (a trap);
//! - `/loop` — never returns (stopped by the deadline);
//! - `/hog` — allocates until the memory cap stops it;
//! - `/sandbox` — answers with what it could read of the host's environment and files;
//! - `/count` — increments a shared kv counter and answers its value;
//! - `/bad-header` — sets a header whose name is not valid HTTP;
//! - anything else — sets `x-plugin: seen` on the request and passes it on.
//!
//! Every response passing back gets `x-plugin-response: 1`. `configure` rejects a config
//! with `"reject": true`.

wit_bindgen::generate!({ path: "../../wit", world: "filter" });

use exports::weir::plugin::http_filter::Guest;
use weir::plugin::types::{
    HeaderOp, HookSet, LocalResponse, RequestAction, RequestChanges, RequestHead, ResponseAction, ResponseHead,
};

struct TestFilter;

fn reply(status: u16, body: String) -> RequestAction {
    RequestAction::Respond(LocalResponse {
        status,
        headers: vec![("content-type".into(), b"text/plain".to_vec()), ("x-answered-by".into(), b"plugin".to_vec())],
        body: body.into_bytes(),
    })
}

impl Guest for TestFilter {
    fn hooks() -> HookSet {
        HookSet::ON_REQUEST | HookSet::ON_RESPONSE
    }

    fn configure(config: String) -> Result<(), String> {
        if config.replace(' ', "").contains("\"reject\":true") {
            Err("reject is true".into())
        } else {
            Ok(())
        }
    }

    fn on_request(request: RequestHead) -> RequestAction {
        match request.path.as_str() {
            "/deny" => reply(403, "denied\n".into()),
            "/trap" => panic!("trap requested"),
            "/loop" => loop {
                std::hint::black_box(0u64);
            },
            "/hog" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "/sandbox" => {
                let env = std::env::var("HOME").map_or_else(|e| format!("denied ({e})"), |v| format!("READ {v}"));
                let file = std::fs::read("/etc/hostname").map_or_else(|e| format!("denied ({e})"), |_| "READ".into());
                reply(200, format!("env: {env}\nfile: {file}\n"))
            }
            "/bad-header" => RequestAction::Continue(RequestChanges {
                headers: vec![HeaderOp::Set(("bad name".into(), b"x".to_vec()))],
                path: None,
            }),
            "/count" => match weir::plugin::kv::increment("hits", 1, None) {
                Ok(n) => reply(200, format!("{n}\n")),
                Err(_) => reply(500, "kv failed\n".into()),
            },
            _ => RequestAction::Continue(RequestChanges {
                headers: vec![HeaderOp::Set(("x-plugin".into(), b"seen".to_vec()))],
                path: None,
            }),
        }
    }

    fn on_response(_request: RequestHead, _response: ResponseHead) -> ResponseAction {
        ResponseAction::Continue(vec![HeaderOp::Append(("x-plugin-response".into(), b"1".to_vec()))])
    }
}

export!(TestFilter);
