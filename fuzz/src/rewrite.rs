//! `rewrite`: the bundled rewrite plugin's config and requests, compiled natively (its Rust
//! logic, through the SDK's test harness, not the wasm). The input is text:
//!
//! ```text
//! [[rules]]            <- the plugin's [config] table, as in NAME.toml without [config]
//! path = '^/v1/(.*)$'
//! rewrite = '/$1'
//! %%
//! GET /v1/users?id=7   <- one or more requests, each a head (method and target, headers)
//! x-tenant: a
//! %%
//! POST /v1/orders
//! ```
//!
//! Asserts, besides no panic, what the README promises: a forwarded path starts with `/`,
//! and a redirect answers one of the redirect statuses with a `location`.

use rewrite::Rewrite;
use weir_plugin::testing::{Harness, RequestOutcome, TestRequest};

use crate::text::{head, sections};

/// At most this many requests per input: more finds nothing new and slows every run.
const MAX_REQUESTS: usize = 8;

/// Configures the plugin from `input`'s first section and runs its requests.
pub fn run(input: &[u8]) {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    let sections = sections(text);
    let Some((config, requests)) = sections.split_first() else {
        return;
    };
    let Ok(harness) = Harness::<Rewrite>::new(config) else {
        return;
    };
    for request in requests.iter().take(MAX_REQUESTS) {
        let (line, headers) = head(request);
        let (method, target) = line.split_once(' ').unwrap_or(("GET", line));
        let mut request = TestRequest::new(method, &format!("/{}", target.trim_start_matches('/')));
        for (name, value) in &headers {
            request = request.header(name, value);
        }
        match harness.request(request) {
            RequestOutcome::Forwarded(forwarded) => assert!(
                forwarded.path.starts_with('/'),
                "forwarded path {:?} does not start with /",
                forwarded.path
            ),
            RequestOutcome::Responded(reply) => {
                assert!(
                    matches!(reply.status, 301 | 302 | 303 | 307 | 308),
                    "a redirect with status {}",
                    reply.status
                );
                assert!(
                    reply.header_value("location").is_some(),
                    "a redirect without a location"
                );
            }
        }
    }
}
