//! The verbs that upload local files: `apply` (workflow definitions) and `events send`
//! (CloudEvents).
//!
//! Both read every file first, so an unreadable one stops the verb (exit 2) before anything
//! is sent. Then each document or event is posted on its own: a refusal is reported and the
//! rest still go (exit 1 at the end), while a server that does not answer stops everything.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::Value;

use kflow_api::definitions::RegisterResponse;
use kflow_api::instances::EventAccepted;

use super::http::{Api, Failure, typed};
use super::render;

const DOC_EXTENSIONS: [&str; 3] = ["yaml", "yml", "json"];

fn has_doc_extension(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| DOC_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// The files `-f` names: a file as is, a folder as its *.yaml/*.yml/*.json files, sorted.
pub fn expand(paths: &[PathBuf]) -> Result<Vec<PathBuf>, Failure> {
    let mut out = Vec::new();
    for p in paths {
        let meta = std::fs::metadata(p)
            .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", p.display())))?;
        if !meta.is_dir() {
            out.push(p.clone());
            continue;
        }
        let entries = std::fs::read_dir(p)
            .map_err(|e| Failure::Usage(format!("cannot read the folder {}: {e}", p.display())))?;
        let mut docs = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| {
                Failure::Usage(format!("cannot read the folder {}: {e}", p.display()))
            })?;
            let path = entry.path();
            if has_doc_extension(&path) && path.is_file() {
                docs.push(path);
            }
        }
        if docs.is_empty() {
            return Err(Failure::Usage(format!(
                "{} holds no *.yaml, *.yml or *.json file",
                p.display()
            )));
        }
        docs.sort();
        out.extend(docs);
    }
    Ok(out)
}

fn content_type(path: &Path, bytes: &[u8]) -> &'static str {
    let json_ext = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if json_ext || first == Some(&b'{') {
        "application/json"
    } else {
        "application/yaml"
    }
}

/// `kflow apply -f FILE|DIR ...`.
pub async fn apply(api: &Api, paths: &[PathBuf]) -> Result<ExitCode, Failure> {
    let files = expand(paths)?;
    let mut docs = Vec::with_capacity(files.len());
    for f in files {
        let bytes = std::fs::read(&f)
            .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", f.display())))?;
        docs.push((f, bytes));
    }
    let mut failed = false;
    for (path, bytes) in docs {
        let ct = content_type(&path, &bytes);
        match api.post_bytes(&["definitions"], ct, bytes).await {
            Ok((status, v)) => {
                let _ = status;
                let r: RegisterResponse = typed(&v, "the registration")?;
                let label = render::workflow_label(&r.namespace, &r.name, &r.version);
                println!("{label} {}", r.outcome);
            }
            Err(Failure::Api { status, error }) => {
                failed = true;
                eprintln!("{}: {}", path.display(), error.render(status));
            }
            Err(Failure::Protocol(m)) => {
                failed = true;
                eprintln!("{}: {m}", path.display());
            }
            Err(other) => return Err(other),
        }
    }
    Ok(ExitCode::from(if failed { 1 } else { 0 }))
}

/// The CloudEvents in a file's text: one JSON object (possibly over many lines), an array of
/// them, or one object per line (blank lines and `#` comments skipped).
pub fn parse_events(text: &str, shown: &str) -> Result<Vec<Value>, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(format!("{shown}: holds no event"));
    }
    if let Ok(v) = serde_json::from_str::<Value>(trimmed) {
        match v {
            Value::Object(_) => return Ok(vec![v]),
            Value::Array(items) if items.iter().all(Value::is_object) && !items.is_empty() => {
                return Ok(items);
            }
            _ => return Err(format!("{shown}: expected CloudEvent JSON objects")),
        }
    }
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match serde_json::from_str::<Value>(line) {
            Ok(v @ Value::Object(_)) => out.push(v),
            Ok(_) => return Err(format!("{shown}:{}: not a JSON object", i + 1)),
            Err(e) => return Err(format!("{shown}:{}: not a JSON CloudEvent: {e}", i + 1)),
        }
    }
    if out.is_empty() {
        return Err(format!("{shown}: holds no event"));
    }
    Ok(out)
}

/// How an event is named in messages: its `id` and `type`.
fn event_label(ev: &Value, n: usize) -> String {
    let s = |k: &str| ev.get(k).map(render::scalar).unwrap_or_default();
    match (s("id"), s("type")) {
        (id, ty) if !id.is_empty() && !ty.is_empty() => format!("{id} ({ty})"),
        (id, _) if !id.is_empty() => id,
        (_, ty) if !ty.is_empty() => format!("event {n} ({ty})"),
        _ => format!("event {n}"),
    }
}

/// `kflow events send FILE`.
pub async fn send_events(api: &Api, file: &Path) -> Result<ExitCode, Failure> {
    let (text, shown) = if file == Path::new("-") {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .map_err(|e| Failure::Usage(format!("cannot read the events from stdin: {e}")))?;
        (s, "<stdin>".to_owned())
    } else {
        let s = std::fs::read_to_string(file)
            .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", file.display())))?;
        (s, file.display().to_string())
    };
    let events = parse_events(&text, &shown).map_err(Failure::Usage)?;
    let mut failed = false;
    for (i, ev) in events.iter().enumerate() {
        let label = event_label(ev, i + 1);
        let body = serde_json::to_vec(ev).unwrap_or_default();
        match api
            .post_bytes(&["events"], "application/cloudevents+json", body)
            .await
        {
            Ok((_, v)) => match typed::<EventAccepted>(&v, "the event") {
                Ok(a) => println!("{label}: matched {}", a.matched),
                Err(e) => {
                    failed = true;
                    eprintln!("{label}: {}", e.render());
                }
            },
            Err(Failure::Api { status, error }) => {
                failed = true;
                eprintln!("{label}: {}", error.render(status));
            }
            Err(Failure::Protocol(m)) => {
                failed = true;
                eprintln!("{label}: {m}");
            }
            Err(other) => return Err(other),
        }
    }
    Ok(ExitCode::from(if failed { 1 } else { 0 }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn events_one_object_array_or_lines() {
        let one = "{\n  \"id\": \"1\",\n  \"type\": \"t\"\n}\n";
        assert_eq!(
            parse_events(one, "f").unwrap(),
            vec![json!({"id": "1", "type": "t"})]
        );
        assert_eq!(
            parse_events("[{\"id\":\"1\"},{\"id\":\"2\"}]", "f")
                .unwrap()
                .len(),
            2
        );
        let lines = "# comment\n{\"id\":\"1\"}\n\n{\"id\":\"2\"}\n";
        assert_eq!(
            parse_events(lines, "f").unwrap(),
            vec![json!({"id": "1"}), json!({"id": "2"})]
        );
        assert_eq!(
            parse_events("{\"id\":\"1\"}\nnope\n", "f")
                .unwrap_err()
                .split(": not")
                .next(),
            Some("f:2")
        );
        assert!(parse_events("  \n", "f").is_err());
        assert!(parse_events("[1]", "f").is_err());
    }

    #[test]
    fn event_labels() {
        assert_eq!(
            event_label(&json!({"id": "e1", "type": "order.placed"}), 1),
            "e1 (order.placed)"
        );
        assert_eq!(
            event_label(&json!({"type": "order.placed"}), 3),
            "event 3 (order.placed)"
        );
        assert_eq!(event_label(&json!({}), 2), "event 2");
    }

    #[test]
    fn folders_expand_to_sorted_documents() {
        let dir = std::env::temp_dir().join(format!("kflow-apply-test-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub.yaml")).unwrap();
        for f in ["b.yml", "a.yaml", "c.JSON", "notes.txt"] {
            std::fs::write(dir.join(f), "x").unwrap();
        }
        let got = expand(std::slice::from_ref(&dir)).unwrap();
        let names: Vec<_> = got
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["a.yaml", "b.yml", "c.JSON"]);
        assert!(matches!(
            expand(&[dir.join("missing.yaml")]),
            Err(Failure::Usage(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn content_types() {
        assert_eq!(
            content_type(Path::new("a.json"), b"document: {}"),
            "application/json"
        );
        assert_eq!(
            content_type(Path::new("a.yaml"), b"  {\"document\": {}}"),
            "application/json"
        );
        assert_eq!(
            content_type(Path::new("a.yaml"), b"document:\n"),
            "application/yaml"
        );
    }
}
