//! A backend's `/metrics` and model lists, as bytes off the wire: never a panic, and a load
//! read from them is a number the router can compute with.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mvllm::scrape::{parse_metrics, parse_models, parse_sglang_model_info};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(load) = parse_metrics(&text) {
        assert!(
            load.running.is_finite() && load.waiting.is_finite(),
            "{load:?}"
        );
        if let Some(usage) = load.kv_cache_usage {
            assert!(usage.is_finite(), "{load:?}");
        }
    }
    let _ = parse_models(data);
    let _ = parse_sglang_model_info(data);
});
