//! A guest filter on the Rust SDK for weir's end-to-end test of the answer the SDK lays out
//! by hand for `request-hook.on-request` (`plugin-sdk/src/answer.rs`;
//! `tests/all/sdk_answer.rs`). By the path's last segment:
//!
//! - `ops`: the request loses `x-drop`, gets `x-set: 1` (replacing the client's) and
//!   `x-add: a` after the client's; the response gets `x-r-set: s`, `x-r-add` twice (`1` set,
//!   then `2` appended), and `x-r-gone`, set and then removed;
//! - `moved`: as `ops` for the request, sent upstream as `/elsewhere?from=moved`;
//! - `reply-bare`: answers 204 with no header and no body;
//! - `reply-full`: answers 418 with three headers and a body;
//!
//! anything else passes unchanged.

use weir_plugin::{Action, Filter, Hooks, NoConfig, Reply, Request};

struct SdkAnswer;

impl SdkAnswer {
    fn request_ops(request: &mut Request) {
        request.remove_header("x-drop");
        request.set_header("x-set", "1");
        request.append_header("x-add", "a");
    }
}

impl Filter for SdkAnswer {
    type Config = NoConfig;

    fn new(_: NoConfig) -> Result<SdkAnswer, String> {
        Ok(SdkAnswer)
    }

    fn hooks(&self) -> Hooks {
        Hooks::REQUEST
    }

    fn on_request(&self, request: &mut Request) -> Action {
        let last = request
            .path()
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        match last.as_str() {
            "ops" => {
                SdkAnswer::request_ops(request);
                request.set_response_header("x-r-set", "s");
                request.set_response_header("x-r-add", "1");
                request.append_response_header("x-r-add", "2");
                request.set_response_header("x-r-gone", "g");
                request.remove_response_header("x-r-gone");
            }
            "moved" => {
                SdkAnswer::request_ops(request);
                request.set_path("/elsewhere");
                request.set_query(Some("from=moved".to_owned()));
            }
            "reply-bare" => return Reply::new(204).into(),
            "reply-full" => {
                return Reply::text(418, "short and stout\n")
                    .header("x-one", "1")
                    .header("x-two", "2")
                    .into();
            }
            _ => {}
        }
        Action::Continue
    }
}

weir_plugin::export_filter!(SdkAnswer);
