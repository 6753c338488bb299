//! Implementation of the `weir:plugin/log` interface, with a limit on repeats: a plugin's
//! instances share a [`Repeats`], and the same line (level and text) is written at most once
//! per [`REPEAT_WINDOW`]; the ones held back are counted and the next one written says how
//! many (`repeated`). Every instance of a plugin meeting the same condition — its store
//! down, say — would otherwise write the same line once each, or a plugin logging per
//! request would flood the log. A line longer than [`MAX_LINE_BYTES`] is cut there and says
//! how much was left out (nginx cuts its error-log lines at 2 KiB).

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Mutex;
use std::time::Duration;

use crate::plugin::contract::current::log::{Host, Level};
use crate::plugin::state::PluginState;

/// How long the same line is held back after it was written.
const REPEAT_WINDOW: Duration = Duration::from_secs(10);
/// Distinct lines remembered per plugin before all are forgotten.
const REMEMBERED_LINES: usize = 1024;
/// The most of one line a plugin writes, in bytes.
const MAX_LINE_BYTES: usize = 8 * 1024;

/// `message`, cut to [`MAX_LINE_BYTES`] (at a character's start) with the count of bytes
/// left out, if it is longer.
fn cut(mut message: String) -> String {
    if message.len() <= MAX_LINE_BYTES {
        return message;
    }
    let end = message.floor_char_boundary(MAX_LINE_BYTES);
    let left_out = message.len() - end;
    message.truncate(end);
    message.push_str(&format!(" … ({left_out} more bytes)"));
    message
}

/// Recently written lines of one plugin: a hash of level and text → when it was written and
/// how many like it were held back since.
#[derive(Debug, Default)]
pub(crate) struct Repeats {
    lines: Mutex<HashMap<u64, (quanta::Instant, u64)>>,
    hasher: std::hash::RandomState,
    /// weir's lines written once per loaded plugin (`first_time`).
    once: Mutex<Vec<&'static str>>,
}

impl Repeats {
    /// Whether weir's line `what` about the plugin has not been written yet: true once per
    /// loaded version of the plugin (a denied capability, say, which a plugin may ask for on
    /// every request but whose fix is the same).
    pub(crate) fn first_time(&self, what: &'static str) -> bool {
        let mut once = self.once.lock().unwrap_or_else(|e| e.into_inner());
        if once.contains(&what) {
            return false;
        }
        once.push(what);
        true
    }

    /// Whether to write weir's own line `message` about the plugin now (a failed call, say),
    /// and how many like it were held back before it.
    pub(crate) fn admit_host_line(&self, message: &str) -> Option<u64> {
        self.admit(Level::Warn, message)
    }

    /// Whether to write this line now, and how many like it were held back before it.
    fn admit(&self, level: Level, message: &str) -> Option<u64> {
        let mut hasher = self.hasher.build_hasher();
        (level as u8).hash(&mut hasher);
        message.hash(&mut hasher);
        let key = hasher.finish();
        let now = quanta::Instant::now();
        let mut lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((written, held)) = lines.get_mut(&key) {
            if now.duration_since(*written) < REPEAT_WINDOW {
                *held += 1;
                return None;
            }
            let repeated = std::mem::take(held);
            *written = now;
            return Some(repeated);
        }
        if lines.len() >= REMEMBERED_LINES {
            lines.clear();
        }
        lines.insert(key, (now, 0));
        Some(0)
    }
}

impl Host for PluginState {
    fn enabled(&mut self, level: Level) -> bool {
        match level {
            Level::Trace => tracing::enabled!(target: "weir::plugin::guest", tracing::Level::TRACE),
            Level::Debug => tracing::enabled!(target: "weir::plugin::guest", tracing::Level::DEBUG),
            Level::Info => tracing::enabled!(target: "weir::plugin::guest", tracing::Level::INFO),
            Level::Warn => tracing::enabled!(target: "weir::plugin::guest", tracing::Level::WARN),
            Level::Error => tracing::enabled!(target: "weir::plugin::guest", tracing::Level::ERROR),
        }
    }

    fn log(&mut self, level: Level, message: String) {
        if !self.enabled(level) {
            return;
        }
        let message = cut(message);
        let Some(repeated) = self.log_repeats.admit(level, &message) else {
            return;
        };
        let (plugin, request_id) = (&*self.plugin, self.request_id.as_str());
        let trace_id = self.trace_id.as_deref();
        let repeated = (repeated > 0).then_some(repeated);
        match level {
            Level::Trace => {
                tracing::trace!(target: "weir::plugin::guest", plugin, request_id, trace_id, repeated, "{message}")
            }
            Level::Debug => {
                tracing::debug!(target: "weir::plugin::guest", plugin, request_id, trace_id, repeated, "{message}")
            }
            Level::Info => {
                tracing::info!(target: "weir::plugin::guest", plugin, request_id, trace_id, repeated, "{message}")
            }
            Level::Warn => {
                tracing::warn!(target: "weir::plugin::guest", plugin, request_id, trace_id, repeated, "{message}")
            }
            Level::Error => {
                tracing::error!(target: "weir::plugin::guest", plugin, request_id, trace_id, repeated, "{message}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_line_is_cut_at_a_character_and_says_how_much_was_left_out() {
        let short = "x".repeat(MAX_LINE_BYTES);
        assert_eq!(cut(short.clone()), short);
        let long = "y".repeat(MAX_LINE_BYTES + 10);
        assert_eq!(
            cut(long),
            format!("{} … (10 more bytes)", "y".repeat(MAX_LINE_BYTES))
        );
        // A three-byte character across the limit is left out whole.
        let split = format!("{}€tail", "z".repeat(MAX_LINE_BYTES - 1));
        assert_eq!(
            cut(split),
            format!("{} … (7 more bytes)", "z".repeat(MAX_LINE_BYTES - 1))
        );
    }

    #[test]
    fn the_same_line_is_written_once_per_window_and_the_rest_counted() {
        let repeats = Repeats::default();
        assert_eq!(repeats.admit(Level::Warn, "store down"), Some(0));
        for _ in 0..5 {
            assert_eq!(repeats.admit(Level::Warn, "store down"), None);
        }
        assert_eq!(
            repeats.admit(Level::Error, "store down"),
            Some(0),
            "another level"
        );
        assert_eq!(
            repeats.admit(Level::Warn, "store back"),
            Some(0),
            "another text"
        );
        // Past the window the line is written again, saying how many were held back.
        let mut lines = repeats.lines.lock().unwrap_or_else(|e| e.into_inner());
        for (written, _) in lines.values_mut() {
            *written = quanta::Instant::now() - REPEAT_WINDOW;
        }
        drop(lines);
        assert_eq!(repeats.admit(Level::Warn, "store down"), Some(5));
    }
}
