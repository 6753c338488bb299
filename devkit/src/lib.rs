//! Tools for plugin authors, behind `weir plugin …`: `new` writes a project from a template,
//! `test` runs a plugin against a case file through the proxy's request path, `bindgen` and
//! `componentize` turn a core module built by any language's compiler into a weir plugin
//! component.

#![forbid(unsafe_code)]

pub mod cases;
pub mod component;
pub mod templates;
