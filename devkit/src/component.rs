//! The filter world for languages without a component toolchain of their own: bindings for C
//! and Go (`weir plugin bindgen`), and a core module made into a plugin component
//! (`weir plugin componentize`: the world's type information embedded, WASI preview 1 adapted
//! to preview 2). A C, Zig or Go plugin needs its compiler and weir, nothing else.

use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow};
use wasi_preview1_component_adapter_provider::{
    WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME, WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
};
use wit_parser::{Resolve, WorldId};

/// The contract `weir plugin new` projects and `bindgen` are built against: `(file name,
/// contents)`. It is the current `weir:plugin` package (`wit/`), so a new plugin gets the
/// lazy hooks, which read a head through its handle instead of being given a copy.
pub const WIT: [(&str, &str); 7] = [
    ("world.wit", include_str!("../../wit/world.wit")),
    ("http-filter.wit", include_str!("../../wit/http-filter.wit")),
    ("types.wit", include_str!("../../wit/types.wit")),
    ("log.wit", include_str!("../../wit/log.wit")),
    ("kv.wit", include_str!("../../wit/kv.wit")),
    ("metrics.wit", include_str!("../../wit/metrics.wit")),
    ("outbound.wit", include_str!("../../wit/outbound.wit")),
];

/// `go.bytecodealliance.org/pkg` at the version wit-bindgen-go's bindings ask for (see
/// `devkit/templates/go-pkg/LICENSE`).
const GO_PKG: [(&str, &str); 12] = [
    ("go.mod", include_str!("../templates/go-pkg/go.mod")),
    ("LICENSE", include_str!("../templates/go-pkg/LICENSE")),
    (
        "wit/async/async.go",
        include_str!("../templates/go-pkg/wit/async/async.go"),
    ),
    (
        "wit/async/empty.s",
        include_str!("../templates/go-pkg/wit/async/empty.s"),
    ),
    (
        "wit/runtime/runtime.go",
        include_str!("../templates/go-pkg/wit/runtime/runtime.go"),
    ),
    (
        "wit/runtime/empty.s",
        include_str!("../templates/go-pkg/wit/runtime/empty.s"),
    ),
    (
        "wit/types/future.go",
        include_str!("../templates/go-pkg/wit/types/future.go"),
    ),
    (
        "wit/types/option.go",
        include_str!("../templates/go-pkg/wit/types/option.go"),
    ),
    (
        "wit/types/result.go",
        include_str!("../templates/go-pkg/wit/types/result.go"),
    ),
    (
        "wit/types/stream.go",
        include_str!("../templates/go-pkg/wit/types/stream.go"),
    ),
    (
        "wit/types/tuple.go",
        include_str!("../templates/go-pkg/wit/types/tuple.go"),
    ),
    (
        "wit/types/unit.go",
        include_str!("../templates/go-pkg/wit/types/unit.go"),
    ),
];

/// A language `bindgen` writes bindings for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BindingsLang {
    /// C (also what Zig uses, through `zig translate-c`).
    C,
    /// Go (`GOOS=wasip1`, `-buildmode=c-shared`).
    Go,
}

/// The contract's package and its `filter` world.
fn filter_world() -> anyhow::Result<(Resolve, WorldId)> {
    let mut sources = wit_parser::SourceMap::new();
    for (name, text) in WIT {
        sources.push(Path::new(name), text);
    }
    let group = sources
        .parse()
        .map_err(|(_, e)| anyhow!("the built-in WIT does not parse: {e}"))?;
    let mut resolve = Resolve::default();
    let package = resolve.push_group(group)?;
    let world = resolve.select_world(&[package], Some("filter"))?;
    Ok((resolve, world))
}

/// Writes the `filter` world's bindings for `lang` into `dir`; returns the files written.
pub fn bindgen(lang: BindingsLang, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let (mut resolve, world) = filter_world()?;
    let mut generator = match lang {
        // `filter_component_type.o` carries the world's type information; link it in.
        BindingsLang::C => wit_bindgen_c::Opts::default().build(),
        BindingsLang::Go => wit_bindgen_go::Opts::default().build(),
    };
    let mut files = wit_bindgen_core::Files::default();
    generator
        .generate(&mut resolve, world, &mut files)
        .context("generating bindings")?;
    if lang == BindingsLang::Go {
        // The bindings' runtime package, vendored (the module proxy may be out of reach) and
        // wired in with a `replace`.
        for (name, text) in GO_PKG {
            files.push(&format!("pkg/{name}"), text.as_bytes());
        }
    }
    let mut written = Vec::new();
    for (name, contents) in files.iter() {
        let replaced;
        let contents = if lang == BindingsLang::Go && name == "go.mod" {
            let text = String::from_utf8_lossy(contents);
            replaced = format!("{text}\nreplace go.bytecodealliance.org/pkg => ./pkg\n");
            replaced.as_bytes()
        } else {
            contents
        };
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, contents)
            .with_context(|| format!("cannot write {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// Turns a core module that implements the `filter` world's exports (built for
/// `wasm32-wasip1` as a reactor) into a component weir loads.
pub fn componentize(core: &[u8]) -> anyhow::Result<Vec<u8>> {
    let (resolve, world) = filter_world()?;
    let mut module = core.to_vec();
    wit_component::embed_component_metadata(
        &mut module,
        &resolve,
        world,
        wit_component::StringEncoding::UTF8,
    )?;
    wit_component::ComponentEncoder::default()
        .module(&module)
        .context("not a core module this world's bindings produced")?
        .validate(true)
        .adapter(
            WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME,
            WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
        )?
        .encode()
        .context("cannot make a component of it")
}
