//! Any bytes given to the document loader: a diagnostic or a workflow, never a crash or hang.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = kflow_dsl::load(data);
});
