//! libFuzzer entry for the `plugin_output` target; the target itself is `weir_fuzz::plugin_output::run`.

#![no_main]
#![forbid(unsafe_code)]

libfuzzer_sys::fuzz_target!(|input: &[u8]| weir_fuzz::plugin_output::run(input));
