//! Fuzzes the request decoders (v2 JSON and binary, V1 JSON, gRPC ModelInferRequest, multipart,
//! image bytes); see kinfer_runtime::fuzz. `make fuzz` runs it for a bounded time.
#![no_main]

use std::sync::OnceLock;

use kinfer_runtime::fuzz::{Models, decode_any};
use libfuzzer_sys::fuzz_target;

static MODELS: OnceLock<Option<Models>> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    if let Some(models) = MODELS.get_or_init(Models::new) {
        decode_any(models, data);
    }
});
