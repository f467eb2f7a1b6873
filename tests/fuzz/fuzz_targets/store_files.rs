#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| versifier_fuzz::store_files(data));
