//! Logging through weir's own log, at weir's level. Each line is tagged with the plugin's
//! name and the request id, so it can be followed next to weir's lines.
//!
//! ```
//! use weir_plugin::log;
//!
//! log::info!("key accepted for consumer {}", "alice");
//! if log::enabled(log::Level::Debug) {
//!     log::log(log::Level::Debug, "only built when debug is on");
//! }
//! ```
//!
//! The macros format only when the level is enabled. Outside wasm (in `cargo test`) lines go
//! to the mock host, where [`testing`](crate::testing) can read them.

/// A log level, from most to least verbose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Very detailed tracing.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal operation.
    Info,
    /// Something unexpected that was handled.
    Warn,
    /// Something failed.
    Error,
}

/// Whether weir would keep a line at `level`; check before building an expensive message.
pub fn enabled(level: Level) -> bool {
    imp::enabled(level)
}

/// Writes `message` at `level`.
pub fn log(level: Level, message: &str) {
    imp::log(level, message)
}

#[doc(hidden)]
#[macro_export]
macro_rules! __log {
    ($level:expr, $($arg:tt)+) => {
        if $crate::log::enabled($level) {
            $crate::log::log($level, &::std::format!($($arg)+));
        }
    };
}

/// Logs at [`Level::Trace`] with `format!` arguments.
#[macro_export]
macro_rules! trace { ($($arg:tt)+) => { $crate::__log!($crate::log::Level::Trace, $($arg)+) }; }
/// Logs at [`Level::Debug`] with `format!` arguments.
#[macro_export]
macro_rules! debug { ($($arg:tt)+) => { $crate::__log!($crate::log::Level::Debug, $($arg)+) }; }
/// Logs at [`Level::Info`] with `format!` arguments.
#[macro_export]
macro_rules! info { ($($arg:tt)+) => { $crate::__log!($crate::log::Level::Info, $($arg)+) }; }
/// Logs at [`Level::Warn`] with `format!` arguments.
#[macro_export]
macro_rules! warn { ($($arg:tt)+) => { $crate::__log!($crate::log::Level::Warn, $($arg)+) }; }
/// Logs at [`Level::Error`] with `format!` arguments.
#[macro_export]
macro_rules! error { ($($arg:tt)+) => { $crate::__log!($crate::log::Level::Error, $($arg)+) }; }

pub use crate::{debug, error, info, trace, warn};

#[cfg(target_arch = "wasm32")]
mod imp {
    use super::Level;
    use crate::bindings::weir::plugin::log as host;

    fn level(level: Level) -> host::Level {
        match level {
            Level::Trace => host::Level::Trace,
            Level::Debug => host::Level::Debug,
            Level::Info => host::Level::Info,
            Level::Warn => host::Level::Warn,
            Level::Error => host::Level::Error,
        }
    }

    pub(super) fn enabled(l: Level) -> bool {
        host::enabled(level(l))
    }

    pub(super) fn log(l: Level, message: &str) {
        host::log(level(l), message)
    }
}

#[cfg(not(target_arch = "wasm32"))]
use crate::mock::log as imp;
