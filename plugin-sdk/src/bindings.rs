//! The `weir:plugin` contract's generated bindings (wit-bindgen). Use the SDK's types
//! instead; these are public only for the export macro.
#![allow(missing_docs, reason = "generated code")]

wit_bindgen::generate!({
    path: "../wit",
    world: "filter",
    pub_export_macro: true,
    default_bindings_module: "weir_plugin::bindings",
    runtime_path: "weir_plugin::__private::wit_bindgen::rt",
    bitflags_path: "weir_plugin::__private::wit_bindgen::rt::bitflags",
});
