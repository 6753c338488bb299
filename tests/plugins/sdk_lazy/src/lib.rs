//! A guest filter on the Rust SDK built with its `without-request-hook` feature, for weir's
//! end-to-end test of the SDK's `on-request-lazy` path, the one a weir older than
//! `weir:plugin` 0.3.7 calls: everything a request hook leaves through the request's handle
//! goes to weir by imports. On every request it leaves `x-left: sdk` for the response; on
//! `/echo` (which the test upstream answers with the body it got) it also makes the request
//! a `POST` with the body `made`.

use weir_plugin::{Action, Filter, Hooks, NoConfig, Request};

struct SdkLazy;

impl Filter for SdkLazy {
    type Config = NoConfig;

    fn new(_: NoConfig) -> Result<SdkLazy, String> {
        Ok(SdkLazy)
    }

    fn hooks(&self) -> Hooks {
        Hooks::REQUEST
    }

    fn on_request(&self, request: &mut Request) -> Action {
        request.set_response_header("x-left", "sdk");
        if request.path() == "/echo" {
            request.set_method("POST");
            request.set_body(b"made".to_vec());
        }
        Action::Continue
    }
}

weir_plugin::export_filter!(SdkLazy);
