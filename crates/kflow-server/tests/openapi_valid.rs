//! The OpenAPI document validates against the OpenAPI 3.1 schema, checked by
//! `openapi-spec-validator` (PyPI), the validator other tools use. Without it the test says
//! so and passes, except under `CI=true` (`.ci/run` installs it), where it fails.

use std::process::Command;

#[test]
fn the_openapi_document_is_valid_openapi_3_1() {
    let have = Command::new("python3")
        .args(["-c", "import openapi_spec_validator"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        assert!(
            std::env::var("CI").is_err(),
            "openapi-spec-validator is missing under CI (pip install openapi-spec-validator)"
        );
        eprintln!(
            "openapi-spec-validator not installed (pip install openapi-spec-validator): skipped"
        );
        return;
    }
    let doc = kflow_server::api::routes::openapi()
        .to_pretty_json()
        .expect("the document as JSON");
    let path = std::env::temp_dir().join(format!("kflow-openapi-{}.json", std::process::id()));
    std::fs::write(&path, doc).expect("write the document");
    let out = Command::new("python3")
        .args(["-m", "openapi_spec_validator"])
        .arg(&path)
        .output()
        .expect("run the validator");
    let _ = std::fs::remove_file(&path);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "the validator refuses the document:\n{text}"
    );
}
