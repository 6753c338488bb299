//! The `weir:plugin` contract's generated bindings (wit-bindgen). Use the SDK's types
//! instead; these are public only for the export macro.
#![allow(missing_docs, reason = "generated code")]

#[cfg(not(feature = "without-request-hook"))]
wit_bindgen::generate!({
    path: "../wit",
    // `filter`, and `request-hook` (0.3.7): the request hook answers with the response
    // header changes it leaves, in one crossing.
    world: "filter-with-request-hook",
    pub_export_macro: true,
    default_bindings_module: "weir_plugin::bindings",
    runtime_path: "weir_plugin::__private::wit_bindgen::rt",
    bitflags_path: "weir_plugin::__private::wit_bindgen::rt::bitflags",
});

// `filter` alone, for weir's tests of the path hosts older than 0.3.7 take.
#[cfg(feature = "without-request-hook")]
wit_bindgen::generate!({
    path: "../wit",
    world: "filter",
    pub_export_macro: true,
    default_bindings_module: "weir_plugin::bindings",
    runtime_path: "weir_plugin::__private::wit_bindgen::rt",
    bitflags_path: "weir_plugin::__private::wit_bindgen::rt::bitflags",
});
