//! The inputs a fuzz target failed on that were weir's bugs, each named for its finding and
//! run through its target (they are in the corpus too, so the replay runs them as well).

use std::path::PathBuf;

fn input(target: &str, name: &str) -> Vec<u8> {
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target)
        .join(name);
    std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

/// `plugin_output`: a plugin's `content-length` framed the message. A request hook's
/// `content-length: 1` then a body hook's `99` on a buffered 14-byte body left the upstream
/// waiting for 85 more bytes (504 after the response timeout); a response hook's
/// `content-length: 3` on a streamed 18-byte body reached the client. weir now frames both
/// from the body it sends (`proxy::forward::frame`).
#[test]
fn a_plugins_content_length_never_frames_a_message() {
    for name in [
        "request-length",
        "streamed-request-length",
        "response-length",
        "streamed-response-length",
    ] {
        weir_fuzz::plugin_output::run(&input("plugin_output", name));
    }
}
