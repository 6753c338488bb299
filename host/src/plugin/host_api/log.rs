//! Implementation of the `weir:plugin/log` interface.

use crate::plugin::contract::current::log::{Host, Level};
use crate::plugin::state::PluginState;

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
        let (plugin, request_id) = (&*self.plugin, self.request_id.as_str());
        let trace_id = self.trace_id.as_deref();
        match level {
            Level::Trace => {
                tracing::trace!(target: "weir::plugin::guest", plugin, request_id, trace_id, "{message}")
            }
            Level::Debug => {
                tracing::debug!(target: "weir::plugin::guest", plugin, request_id, trace_id, "{message}")
            }
            Level::Info => {
                tracing::info!(target: "weir::plugin::guest", plugin, request_id, trace_id, "{message}")
            }
            Level::Warn => {
                tracing::warn!(target: "weir::plugin::guest", plugin, request_id, trace_id, "{message}")
            }
            Level::Error => {
                tracing::error!(target: "weir::plugin::guest", plugin, request_id, trace_id, "{message}")
            }
        }
    }
}
