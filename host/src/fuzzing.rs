//! The seams the fuzz targets (`fuzz/`) call that are not weir's public API: the request
//! path normaliser. Hidden from the docs; nothing else should use it.
//!
//! Everything else the targets drive — `config::parse`, and what a plugin returns through
//! `PluginRuntime`, `Generation` and `ProxyService` — is public already, so a target goes
//! through the same door as weir itself and survives changes behind it.

use std::borrow::Cow;

use crate::config::PathNormalization;

/// `proxy::path::normalize`: the normal form of `path` (no query), or why it is refused.
pub fn normalize_path<'p>(
    path: &'p str,
    policy: &PathNormalization,
) -> Result<Cow<'p, str>, String> {
    crate::proxy::path::normalize(path, policy).map_err(|e| e.to_string())
}

/// `proxy::path::apply`: normalises `request`'s path in its URI (the query untouched), or
/// says why the request would be answered 400.
pub fn normalize_request<B>(
    request: &mut http::Request<B>,
    policy: &PathNormalization,
) -> Result<(), String> {
    crate::proxy::path::apply(request, policy).map_err(|e| e.to_string())
}
