//! A guest filter on the Rust SDK for weir's end-to-end test of the response cache key
//! (`request.set-cache-key` and `request.add-cache-key`, weir:plugin 0.3.5;
//! `tests/all/cache_key.rs`). On each request it:
//!
//! - adds the value of `x-tenant`, if present, to the key (one stored copy per tenant);
//! - when the query has a `utm=` parameter, sets the key to weir's own without it
//!   (`http://host/path?rest`), so the request shares the entry of the URL without it;
//! - when `x-bad-key: 1` is present, adds a 2,000-byte part, which weir refuses by failing
//!   the call (and drops what the call did to the key).

use weir_plugin::{Action, Filter, Hooks, NoConfig, Request};

struct CacheKey;

impl Filter for CacheKey {
    type Config = NoConfig;

    fn new(_: NoConfig) -> Result<CacheKey, String> {
        Ok(CacheKey)
    }

    fn hooks(&self) -> Hooks {
        Hooks::REQUEST
    }

    fn on_request(&self, request: &mut Request) -> Action {
        if let Some(tenant) = request.header("x-tenant").map(str::to_owned) {
            request.add_cache_key(&tenant);
        }
        if let Some(query) = request.query()
            && query.split('&').any(|p| p.starts_with("utm="))
        {
            let kept: Vec<&str> = query
                .split('&')
                .filter(|p| !p.starts_with("utm="))
                .collect();
            let host = request.authority().unwrap_or_default().to_ascii_lowercase();
            let mut key = format!("http://{host}{}", request.path());
            if !kept.is_empty() {
                key.push('?');
                key.push_str(&kept.join("&"));
            }
            request.set_cache_key(&key);
        }
        if request.header("x-bad-key") == Some("1") {
            request.add_cache_key(&"b".repeat(2000));
        }
        Action::Continue
    }
}

weir_plugin::export_filter!(CacheKey);
