//! The host side of the WIT imports, one file per interface.

pub(crate) mod kv;
pub(crate) mod log;
pub(crate) mod metrics;
pub(crate) mod outbound;
pub(crate) mod types;
