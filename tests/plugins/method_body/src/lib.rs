//! A guest filter on the Rust SDK for weir's end-to-end test of a request hook's method and
//! body (`request.set-method` and `request.set-body`, weir:plugin 0.3.6;
//! `tests/all/method_body.rs`). By path:
//!
//! - `/as-post?...`: the GET becomes a `POST /echo` whose body is `made of ` and the query;
//! - `/replace`: the client's body is replaced by `replaced`, sent to `/echo`;
//! - `/trap`, for a plugin configured with `trap = true`: gives a body, then a method weir
//!   refuses, which traps the call after weir has the body (so weir must drop it); a plugin
//!   configured without `trap` lets the request pass, so a body left behind by the failed
//!   call would be sent with the next call's changes;
//! - `/get-body`: gives a GET a body, which weir refuses when the call returns;
//! - `/huge`: gives a body over 1 MiB, which weir refuses by trapping the call.
//!
//! Anything else passes unchanged.

use weir_plugin::{Action, Filter, Hooks, Request};

/// The `[config]` table.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Whether `/trap` traps.
    #[serde(default)]
    trap: bool,
}

struct MethodBody {
    trap: bool,
}

impl Filter for MethodBody {
    type Config = Config;

    fn new(config: Config) -> Result<MethodBody, String> {
        Ok(MethodBody { trap: config.trap })
    }

    fn hooks(&self) -> Hooks {
        Hooks::REQUEST
    }

    fn on_request(&self, request: &mut Request) -> Action {
        match request.path() {
            "/as-post" => {
                let body = format!("made of {}", request.query().unwrap_or_default());
                request.set_method("POST");
                request.set_body(body);
                request.set_header("content-type", "text/plain");
                request.set_path("/echo");
                request.set_query(None);
            }
            "/replace" => {
                request.set_body("replaced");
                request.set_path("/echo");
            }
            "/trap" if self.trap => {
                // The SDK sends the body, then the method, when the hook returns: weir has
                // the body when the method traps the call.
                request.set_body("lost");
                request.set_method("not a method");
            }
            "/get-body" => request.set_body("a GET has no content"),
            "/huge" => {
                request.set_method("PUT");
                request.set_body(vec![b'x'; (1 << 20) + 1]);
            }
            _ => {}
        }
        Action::Continue
    }
}

weir_plugin::export_filter!(MethodBody);
