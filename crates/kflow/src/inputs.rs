//! Reading what the user hands to the CLI: documents, input, secrets, events.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, bail};
use serde_json::Value;

use kflow_dsl::Workflow;

/// Registered workflows by (namespace, name, version).
pub type Registry = HashMap<(String, String, String), std::sync::Arc<Workflow>>;

/// Loads and validates one document (kflow's extensions refused when `strict`); on failure,
/// one `FILE:LINE:COL: message` line per problem.
pub fn load_workflow_with(path: &Path, strict: bool) -> Result<Workflow, Vec<String>> {
    let shown = path.display();
    let bytes =
        std::fs::read(path).map_err(|e| vec![format!("{shown}: cannot read the file: {e}")])?;
    kflow_dsl::load_with(&bytes, &kflow_dsl::LoadOptions { strict })
        .map_err(|diags| diags.iter().map(|d| format!("{shown}:{d}")).collect())
}

/// Parses JSON, or YAML when it is not JSON.
fn parse_data(bytes: &[u8], what: &str) -> anyhow::Result<Value> {
    if let Ok(v) = serde_json::from_slice::<Value>(bytes) {
        return Ok(v);
    }
    match kflow_dsl::node::parse_value(bytes, &kflow_dsl::node::Limits::default()) {
        Ok(node) => Ok(node.to_json()),
        Err(d) => bail!("{what}:{d}"),
    }
}

pub fn read_input(inline: Option<&str>, file: Option<&Path>) -> anyhow::Result<Value> {
    if let Some(s) = inline {
        return serde_json::from_str(s).with_context(|| format!("--input is not valid JSON: {s}"));
    }
    if let Some(p) = file {
        let bytes = std::fs::read(p)
            .with_context(|| format!("cannot read --input-file {}", p.display()))?;
        return parse_data(&bytes, &p.display().to_string());
    }
    Ok(Value::Object(Default::default()))
}

/// `$secrets`: `--secrets-file`, else `$KFLOW_SECRETS_FILE`, else the JSON map in `$KFLOW_SECRETS`.
pub fn read_secrets(file: Option<&Path>) -> anyhow::Result<Value> {
    let from_file = |p: &Path| -> anyhow::Result<Value> {
        let bytes = std::fs::read(p)
            .with_context(|| format!("cannot read the secrets file {}", p.display()))?;
        let v = parse_data(&bytes, &p.display().to_string())?;
        if !v.is_object() {
            bail!(
                "the secrets file {} must hold a map of secret name to value",
                p.display()
            );
        }
        Ok(v)
    };
    if let Some(p) = file {
        return from_file(p);
    }
    if let Some(p) = std::env::var_os("KFLOW_SECRETS_FILE") {
        return from_file(Path::new(&p));
    }
    if let Ok(s) = std::env::var("KFLOW_SECRETS") {
        let v: Value = serde_json::from_str(&s).context("KFLOW_SECRETS is not valid JSON")?;
        if !v.is_object() {
            bail!("KFLOW_SECRETS must hold a JSON map of secret name to value");
        }
        return Ok(v);
    }
    Ok(Value::Object(Default::default()))
}

/// CloudEvents, one JSON object per line (blank lines and `#` comments skipped).
pub fn read_events(path: &Path) -> anyhow::Result<Vec<Value>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read --events {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let v: Value = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not a JSON CloudEvent", path.display(), i + 1))?;
        if !v.is_object() {
            bail!(
                "{}:{}: a CloudEvent must be a JSON object",
                path.display(),
                i + 1
            );
        }
        out.push(v);
    }
    Ok(out)
}

/// Every workflow document (`*.yaml`, `*.yml`, `*.json`) in a folder.
pub fn load_dir(dir: &Path, strict: bool) -> anyhow::Result<Registry> {
    let mut reg = Registry::new();
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read --workflows {}", dir.display()))?;
    let mut problems = Vec::new();
    for entry in entries {
        let path = entry?.path();
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        if !matches!(ext, "yaml" | "yml" | "json") {
            continue;
        }
        match load_workflow_with(&path, strict) {
            Ok(wf) => {
                let d = &wf.document;
                reg.insert(
                    (d.namespace.clone(), d.name.clone(), d.version.clone()),
                    std::sync::Arc::new(wf),
                );
            }
            Err(lines) => problems.extend(lines),
        }
    }
    if !problems.is_empty() {
        bail!(
            "invalid workflows in {}:\n{}",
            dir.display(),
            problems.join("\n")
        );
    }
    Ok(reg)
}
