//! Data-driven diagnostics tests: each `tests/diagnostics/*.yaml` is a small invalid document,
//! and its sibling `*.expected` holds the exact diagnostics `kflow_dsl::load` must report, one
//! `LINE:COL: message` per line. A new case is a new pair of files, not new code. Cases whose
//! name starts with `strict-` are loaded in strict mode (`LoadOptions { strict: true }`, what
//! `kflow validate --strict` does).
//!
//! `UPDATE_EXPECT=1 cargo test -p kflow-dsl --test diagnostics` rewrites the expected files from
//! the current output (review the diff before committing it).

use std::path::{Path, PathBuf};

fn render(text: &[u8], strict: bool) -> String {
    match kflow_dsl::load_with(text, &kflow_dsl::LoadOptions { strict }) {
        Ok(_) => "(no diagnostics: the document is valid)\n".to_string(),
        Err(diags) => diags.iter().map(|d| format!("{d}\n")).collect(),
    }
}

fn cases() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/diagnostics");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn diagnostics_match_expected_files() {
    let update = std::env::var("UPDATE_EXPECT").is_ok_and(|v| v == "1");
    let cases = cases();
    assert!(
        cases.len() >= 25,
        "expected at least 25 cases, found {}",
        cases.len()
    );
    let mut failures = Vec::new();
    for case in &cases {
        let text =
            std::fs::read(case).unwrap_or_else(|e| panic!("cannot read {}: {e}", case.display()));
        let strict = case
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("strict-"));
        let actual = render(&text, strict);
        let expected_path = case.with_extension("expected");
        if update {
            std::fs::write(&expected_path, &actual)
                .unwrap_or_else(|e| panic!("cannot write {}: {e}", expected_path.display()));
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if expected != actual {
            let name = case
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            failures.push(format!(
                "--- {name}\nexpected:\n{expected}actual:\n{actual}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ (rerun with UPDATE_EXPECT=1 to accept the new output):\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
