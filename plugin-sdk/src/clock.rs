//! Wall-clock time: WASI's clock inside weir, the mock host's settable clock in `cargo test`.

use std::time::SystemTime;

/// The current time.
pub fn now() -> SystemTime {
    #[cfg(target_arch = "wasm32")]
    {
        SystemTime::now()
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        crate::mock::with(|host| host.now)
    }
}
