//! The `weir:plugin` contract's generated bindings (wit-bindgen). Use the SDK's types
//! instead; these are public only for the export macro.
#![allow(missing_docs, reason = "generated code")]

// The world `filter`: every import, and the `http-filter` export with wit-bindgen's glue.
wit_bindgen::generate!({
    path: "../wit",
    world: "filter",
    pub_export_macro: true,
    default_bindings_module: "weir_plugin::bindings",
    runtime_path: "weir_plugin::__private::wit_bindgen::rt",
    bitflags_path: "weir_plugin::__private::wit_bindgen::rt::bitflags",
});

/// `request-hook` (0.3.7) as a world of its own, for its type only: its one function is
/// skipped here and exported by hand (`crate::answer`, which says why). Expanded in the
/// plugin by `export_filter!`, its export macro adds this world's type to the component's,
/// so the component exports `request-hook` beside `filter`'s `http-filter`.
#[cfg(not(feature = "without-request-hook"))]
pub mod hook {
    wit_bindgen::generate!({
        path: "../wit",
        inline: "package weir:sdk; world request-hook { export weir:plugin/request-hook@0.3.7; }",
        world: "weir:sdk/request-hook",
        skip: ["on-request"],
        with: { "weir:plugin/types@0.3.7": crate::bindings::weir::plugin::types },
        pub_export_macro: true,
        default_bindings_module: "weir_plugin::bindings::hook",
        runtime_path: "weir_plugin::__private::wit_bindgen::rt",
        bitflags_path: "weir_plugin::__private::wit_bindgen::rt::bitflags",
    });
}
