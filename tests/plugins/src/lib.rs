//! A guest filter for weir's end-to-end tests. What it does depends on the request path:
//! - `/deny` — answers 403 itself;
//! - `/trap` — panics (a trap);
//! - `/loop` — never returns (stopped by the deadline);
//! - `/hog` — allocates until the memory cap stops it;
//! - `/sleep` — sleeps 30 s in WASI (cut off at its deadline), then answers 200;
//! - `/sandbox` — answers with what it could read of the host's environment and files;
//! - `/count` — increments a shared kv counter and answers its value;
//! - `/bad-header` — sets a header whose name is not valid HTTP;
//! - `/remember` — answers with the `x-secret` of the previous request this instance saw,
//!   then keeps this request's in a global (what persists between requests on purpose);
//! - anything else — sets `x-plugin: seen` on the request and passes it on.
//!
//! Every response passing back gets `x-plugin-response: 1`, `x-secret-seen` with the
//! request's `x-secret` as `on-response` saw it, and `x-plugin-version` with the
//! config's `version` if it has one. `configure` rejects a config with `"reject": true`.

// Built against the frozen 0.1.0 contract on purpose: it proves older plugins keep loading.
wit_bindgen::generate!({ path: "../../wit/0.1.0", world: "filter" });

use exports::weir::plugin::http_filter::Guest;
use weir::plugin::types::{
    HeaderOp, HookSet, LocalResponse, RequestAction, RequestChanges, RequestHead, ResponseAction, ResponseHead,
};

struct TestFilter;

/// `version` from the config, if any.
static VERSION: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);
/// The previous request's `x-secret`, kept on purpose.
static REMEMBERED: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());

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
        let compact = config.replace(' ', "");
        if compact.contains("\"reject\":true") {
            return Err("reject is true".into());
        }
        let version = compact
            .split_once("\"version\":\"")
            .and_then(|(_, rest)| rest.split_once('"'))
            .map(|(v, _)| v.to_owned());
        if let Ok(mut slot) = VERSION.lock() {
            *slot = version;
        }
        Ok(())
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
            // A heap that only grows: 1 MiB kept for good on every call.
            "/leak" => {
                std::hint::black_box(Box::leak(vec![1u8; 1 << 20].into_boxed_slice()));
                reply(200, "leaked\n".into())
            }
            "/sleep" => {
                std::thread::sleep(std::time::Duration::from_secs(30));
                reply(200, "slept\n".into())
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
            "/remember" => {
                let secret = request
                    .headers
                    .iter()
                    .find(|(n, _)| n == "x-secret")
                    .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default();
                let previous = REMEMBERED.lock().map(|mut kept| std::mem::replace(&mut *kept, secret)).unwrap_or_default();
                reply(200, format!("previous: {previous}\n"))
            }
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

    fn on_response(request: RequestHead, _response: ResponseHead) -> ResponseAction {
        let mut ops = vec![HeaderOp::Append(("x-plugin-response".into(), b"1".to_vec()))];
        if let Some((_, secret)) = request.headers.iter().find(|(n, _)| n == "x-secret") {
            ops.push(HeaderOp::Set(("x-secret-seen".into(), secret.clone())));
        }
        if let Some(version) = VERSION.lock().ok().and_then(|v| v.clone()) {
            ops.push(HeaderOp::Set(("x-plugin-version".into(), version.into_bytes())));
        }
        ResponseAction::Continue(ops)
    }
}

export!(TestFilter);
