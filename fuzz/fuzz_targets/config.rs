//! servers.toml, as an operator might write it (or break it): never a panic; a mistake is an
//! error naming the file; a config that loads can be described (`check-config`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mvllm::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text, "fuzz.toml".as_ref()) {
        Ok(config) => {
            let _ = config.describe();
        }
        Err(error) => assert!(error.to_string().starts_with("fuzz.toml"), "{error}"),
    }
});
