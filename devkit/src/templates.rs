//! `weir plugin new`: ready-to-build plugin projects, one template per language, embedded in
//! the binary (`devkit/templates/`). Each project has the contract's WIT files, the filter
//! source, a `build.sh` that produces `NAME.wasm`, a README, and a `cases.toml` that
//! `weir plugin test` passes.

use std::path::Path;

use anyhow::{Context, bail};

use super::component::WIT;

/// A language `weir plugin new` has a template for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// Rust, with wit-bindgen, for `wasm32-wasip2`.
    Rust,
    /// JavaScript, with componentize-js.
    Js,
    /// JavaScript on QuickJS, with componentize-qjs: lighter than componentize-js, and
    /// called with whole heads (`whole_heads = true`).
    JsQuickjs,
    /// TypeScript: `tsc` over the types `jco guest-types` writes, then componentize-js.
    Ts,
    /// Python, with componentize-py.
    Python,
    /// Go (`GOOS=wasip1`), with `weir plugin bindgen --lang go`.
    Go,
    /// C, compiled with `zig cc` (or clang with wasi-libc), with `weir plugin bindgen`.
    C,
    /// Zig, over the C bindings.
    Zig,
}

impl Lang {
    /// The language's name for people.
    pub fn display_name(self) -> &'static str {
        match self {
            Lang::Rust => "Rust",
            Lang::Js => "JavaScript",
            Lang::JsQuickjs => "JavaScript (QuickJS)",
            Lang::Ts => "TypeScript",
            Lang::Python => "Python",
            Lang::Go => "Go",
            Lang::C => "C",
            Lang::Zig => "Zig",
        }
    }

    /// What the project's settings must say besides `[config]`, in `cases.toml`'s `[plugin]`
    /// and in `NAME.toml` beside the plugin.
    fn settings(self) -> &'static str {
        match self {
            Lang::JsQuickjs => "whole_heads = true\n",
            _ => "",
        }
    }

    /// What the README says of the hooks weir calls.
    fn hooks(self) -> &'static str {
        match self {
            Lang::JsQuickjs => {
                "componentize-qjs 0.4.5 cannot give back the handle a lazy hook is\nlent, so the settings say `whole_heads = true` (in `cases.toml`'s `[plugin]`, and in\n`{{name}}.toml` beside the plugin): weir calls the record forms, `on-request` and\n`on-response`, given whole heads. They have no handle, so the request hook cannot leave\nheader changes for the response (the response hook makes them). The lazy hooks,\n`on-request-lazy` and `on-response-lazy`, are exported too and never called."
            }
            _ => {
                "weir calls the lazy hooks,\n`on-request-lazy` and `on-response-lazy`, which read the request and response through\nhandles, so the filter pays only for what it reads; the record forms, `on-request` and\n`on-response`, are exported too and answer the same way."
            }
        }
    }

    /// The command, run in the project folder, that builds `NAME.wasm` (the same for every
    /// language).
    pub const BUILD_COMMAND: &'static str = "./build.sh";

    fn files(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Lang::Rust => &[
                ("Cargo.toml", include_str!("../templates/rust/Cargo.toml")),
                ("src/lib.rs", include_str!("../templates/rust/src/lib.rs")),
                ("build.sh", include_str!("../templates/rust/build.sh")),
            ],
            Lang::Js => &[
                ("filter.js", include_str!("../templates/js/filter.js")),
                ("package.json", include_str!("../templates/js/package.json")),
                ("build.sh", include_str!("../templates/js/build.sh")),
            ],
            Lang::JsQuickjs => &[
                (
                    "filter.js",
                    include_str!("../templates/js-quickjs/filter.js"),
                ),
                (
                    "package.json",
                    include_str!("../templates/js-quickjs/package.json"),
                ),
                ("build.sh", include_str!("../templates/js-quickjs/build.sh")),
            ],
            Lang::Ts => &[
                ("filter.ts", include_str!("../templates/ts/filter.ts")),
                (
                    "tsconfig.json",
                    include_str!("../templates/ts/tsconfig.json"),
                ),
                ("package.json", include_str!("../templates/ts/package.json")),
                ("build.sh", include_str!("../templates/ts/build.sh")),
            ],
            Lang::Python => &[
                ("app.py", include_str!("../templates/python/app.py")),
                ("build.sh", include_str!("../templates/python/build.sh")),
            ],
            Lang::Go => &[
                (
                    "export_weir_plugin_http_filter/filter.go",
                    include_str!("../templates/go/export_weir_plugin_http_filter/filter.go"),
                ),
                ("build.sh", include_str!("../templates/go/build.sh")),
            ],
            Lang::C => &[
                ("filter.c", include_str!("../templates/c/filter.c")),
                ("build.sh", include_str!("../templates/c/build.sh")),
            ],
            Lang::Zig => &[
                ("filter.zig", include_str!("../templates/zig/filter.zig")),
                ("build.sh", include_str!("../templates/zig/build.sh")),
            ],
        }
    }
}

/// Files every project gets.
const COMMON: [(&str, &str); 2] = [
    ("cases.toml", include_str!("../templates/common-cases.toml")),
    ("README.md", include_str!("../templates/README.md")),
];

/// Writes a `lang` project for the plugin `name` into `dir`, which must not exist yet.
pub fn write(lang: Lang, name: &str, dir: &Path) -> anyhow::Result<()> {
    check_name(name)?;
    if dir.exists() {
        bail!("{} already exists", dir.display());
    }
    let crate_name = name.replace('-', "_");
    // The language's own pieces first: they may name the plugin.
    let fill = |text: &str| {
        text.replace("{{settings}}", lang.settings())
            .replace("{{hooks}}", lang.hooks())
            .replace("{{name}}", name)
            .replace("{{crate}}", &crate_name)
            .replace("{{lang}}", lang.display_name())
            .replace("{{build}}", Lang::BUILD_COMMAND)
    };
    let wit = WIT
        .iter()
        .map(|(file, text)| (format!("wit/{file}"), *text));
    let own = lang.files().iter().chain(&COMMON);
    let files = own
        .map(|(file, text)| ((*file).to_owned(), *text))
        .chain(wit);
    for (file, text) in files {
        let path = dir.join(&file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, fill(text))
            .with_context(|| format!("cannot write {}", path.display()))?;
        if file.ends_with(".sh") {
            make_executable(&path)?;
        }
    }
    Ok(())
}

/// A plugin name is a file name, a crate name and a URL segment: lower-case letters, digits
/// and `-`, starting with a letter.
fn check_name(name: &str) -> anyhow::Result<()> {
    let valid = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid {
        bail!(
            "{name:?} is not a plugin name: use lower-case letters, digits and '-', starting with a letter"
        );
    }
    Ok(())
}

#[cfg(unix)]
fn make_executable(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("cannot make {} executable", path.display()))
}

#[cfg(not(unix))]
fn make_executable(_: &Path) -> anyhow::Result<()> {
    Ok(())
}
