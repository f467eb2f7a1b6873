#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = versifier_fuzz::config_json(data);
});
