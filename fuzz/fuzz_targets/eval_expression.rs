//! Any jq text compiled and run against a small input: an error or a value, never a crash.
#![no_main]

use kflow_dsl::expr::Expr;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(e) = Expr::compile(src) {
        let input = serde_json::json!({"a": [1, 2, {"b": "c"}], "n": 3, "s": "text"});
        let _ = e.eval(&input, &());
    }
});
