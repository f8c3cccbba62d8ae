//! The instance verbs: `start`, `get`, `ls`, `cancel`/`suspend`/`resume` and `history`.
//!
//! Each one makes its request through [`Api`], prints the answer (the server's JSON as is with
//! `-o json`, a summary or table otherwise) and returns the exit code; failures travel back to
//! [`super::run`] as [`Failure`]s.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::{Map, Value, json};

use super::Format;
use super::ListArgs;
use kflow_api::instances::{HistoryList, InstanceDto, InstanceList, InstanceViewDto, Status};

use super::http::{Api, Failure, typed};
use super::render;
use super::watch::{self, Mode};

/// `[NAMESPACE/]NAME[@VERSION]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkflowRef {
    pub namespace: String,
    pub name: String,
    pub version: Option<String>,
}

/// The namespace of a workflow named without one: `$KFLOW_NAMESPACE`, else `default`.
pub fn default_namespace() -> String {
    std::env::var("KFLOW_NAMESPACE")
        .ok()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".into())
}

/// `[NAMESPACE/]NAME[@VERSION]`; without a namespace, `default_ns`.
pub fn parse_workflow_ref(s: &str, default_ns: &str) -> Result<WorkflowRef, String> {
    let bad = |why: &str| format!("{s:?} is not [NAMESPACE/]NAME[@VERSION]: {why}");
    let (path, version) = match s.split_once('@') {
        Some((p, v)) => (p, Some(v)),
        None => (s, None),
    };
    let (namespace, name) = path.split_once('/').unwrap_or((default_ns, path));
    if namespace.is_empty() {
        return Err(bad("the namespace is empty"));
    }
    if name.is_empty() {
        return Err(bad("the name is empty"));
    }
    if name.contains('/') {
        return Err(bad("too many '/'"));
    }
    if version.is_some_and(|v| v.is_empty() || v.contains('@')) {
        return Err(bad("the version after '@' is empty or holds another '@'"));
    }
    Ok(WorkflowRef {
        namespace: namespace.into(),
        name: name.into(),
        version: version.map(str::to_owned),
    })
}

fn print_json(v: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
}

pub struct StartOptions {
    pub workflow: String,
    pub input: Option<String>,
    pub input_file: Option<PathBuf>,
    pub wait: bool,
    pub watch: bool,
    pub priority: Option<i64>,
    pub id: Option<String>,
}

/// `kflow start`: without --wait/--watch prints the new id on stdout; with them the id goes to
/// stderr (`started ID`) so stdout holds only the output (or error) JSON, like `kflow run`.
pub async fn start(api: &Api, opts: StartOptions) -> Result<ExitCode, Failure> {
    let wf = parse_workflow_ref(&opts.workflow, &default_namespace()).map_err(Failure::Usage)?;
    let mut body = Map::new();
    body.insert("namespace".into(), json!(wf.namespace));
    body.insert("name".into(), json!(wf.name));
    if let Some(v) = &wf.version {
        body.insert("version".into(), json!(v));
    }
    if opts.input.is_some() || opts.input_file.is_some() {
        let input = crate::inputs::read_input(opts.input.as_deref(), opts.input_file.as_deref())
            .map_err(|e| Failure::Usage(format!("{e:#}")))?;
        body.insert("input".into(), input);
    }
    if let Some(p) = opts.priority {
        body.insert("priority".into(), json!(p));
    }
    if let Some(id) = &opts.id {
        body.insert("id".into(), json!(id));
    }
    let inst: InstanceDto = typed(
        &api.post_json(&["instances"], &Value::Object(body)).await?,
        "the instance started",
    )?;
    let id = inst.id.clone();
    if !opts.wait && !opts.watch {
        println!("{id}");
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("started {id}");
    let mode = match (opts.watch, std::io::stderr().is_terminal()) {
        (false, _) => Mode::Quiet,
        (true, true) => Mode::StatusLine,
        (true, false) => Mode::Lines,
    };
    let done = if inst.status.is_finished() {
        inst
    } else {
        watch::follow(api, &id, mode).await?
    };
    Ok(print_outcome(&done))
}

/// `kflow watch ID`: follows an instance until it ends (at once when it has), then prints its
/// outcome.
pub async fn watch(api: &Api, id: &str) -> Result<ExitCode, Failure> {
    let inst: InstanceDto = typed(&api.get(&["instances", id], &[]).await?, "the instance")?;
    let done = if inst.status.is_finished() {
        inst
    } else {
        let mode = if std::io::stderr().is_terminal() {
            Mode::StatusLine
        } else {
            Mode::Lines
        };
        watch::follow(api, &inst.id, mode).await?
    };
    Ok(print_outcome(&done))
}

/// Prints what a finished instance produced; exit 0 completed, 1 faulted or cancelled.
fn print_outcome(inst: &InstanceDto) -> ExitCode {
    match inst.status {
        Status::Completed => {
            print_json(inst.output.as_ref().unwrap_or(&Value::Null));
            ExitCode::SUCCESS
        }
        status => {
            match inst.error.as_ref().filter(|e| !e.is_null()) {
                Some(e) => print_json(e),
                None => eprintln!("kflow: instance {} {}", inst.id, status.as_str()),
            }
            ExitCode::from(1)
        }
    }
}

/// `kflow get ID`.
pub async fn get(api: &Api, id: &str, format: Format) -> Result<ExitCode, Failure> {
    let inst = api.get(&["instances", id], &[]).await?;
    match format {
        Format::Json | Format::Yaml => super::print_data(format, &inst),
        Format::Text => print!(
            "{}",
            render::instance_summary(&typed::<InstanceViewDto>(&inst, "the instance")?)
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// The query string of `kflow ls` (without the cursor).
pub fn list_query(f: &ListArgs) -> Vec<(&'static str, String)> {
    let mut q = Vec::new();
    let fields = [
        ("namespace", &f.namespace),
        ("name", &f.workflow),
        ("version", &f.version),
        ("status", &f.status),
        ("from", &f.from),
        ("to", &f.to),
    ];
    for (k, v) in fields {
        if let Some(v) = v {
            q.push((k, v.clone()));
        }
    }
    if let Some(n) = f.limit {
        q.push(("limit", n.to_string()));
    }
    q
}

/// `kflow ls`: one page, or every page with `--all`.
pub async fn ls(api: &Api, filter: &ListArgs, format: Format) -> Result<ExitCode, Failure> {
    let base = list_query(filter);
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    let more = loop {
        let mut q = base.clone();
        if let Some(c) = &cursor {
            q.push(("cursor", c.clone()));
        }
        let page = api.get(&["instances"], &q).await?;
        if !filter.all && format.is_data() {
            super::print_data(format, &page);
            return Ok(ExitCode::SUCCESS);
        }
        let page: InstanceList = typed(&page, "the instance list")?;
        items.extend(page.items);
        match page.next.filter(|n| !n.is_empty()) {
            Some(next) if filter.all => {
                if cursor.as_ref() == Some(&next) {
                    return Err(Failure::Protocol(format!(
                        "the server returned the same cursor twice: {next}"
                    )));
                }
                cursor = Some(next);
            }
            next => break next.is_some(),
        }
    };
    match format {
        Format::Json | Format::Yaml => super::print_data(format, &json!({ "items": items })),
        Format::Text if items.is_empty() => eprintln!("no instances found"),
        Format::Text => {
            print!("{}", render::instance_table(&items));
            if more {
                eprintln!("(more instances: add --all to list every page)");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `kflow cancel|suspend|resume ID`: prints `ID STATUS`.
pub async fn control(
    api: &Api,
    id: &str,
    action: &str,
    format: Format,
) -> Result<ExitCode, Failure> {
    let inst = api
        .post_json(&["instances", id, action], &json!({}))
        .await?;
    match format {
        Format::Json | Format::Yaml => super::print_data(format, &inst),
        Format::Text => {
            let inst: InstanceDto = typed(&inst, "the instance")?;
            println!("{} {}", inst.id, inst.status.as_str());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `kflow retry ID [--task REF]`: prints the new instance's id.
pub async fn retry(
    api: &Api,
    id: &str,
    task: Option<String>,
    format: Format,
) -> Result<ExitCode, Failure> {
    let body = match task {
        Some(t) => json!({ "task": t }),
        None => json!({}),
    };
    let inst = api.post_json(&["instances", id, "retry"], &body).await?;
    match format {
        Format::Json | Format::Yaml => super::print_data(format, &inst),
        Format::Text => {
            let inst: InstanceDto = typed(&inst, "the instance")?;
            println!("{}", inst.id);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `kflow history ID`.
pub async fn history(api: &Api, id: &str, format: Format) -> Result<ExitCode, Failure> {
    let page = api.get(&["instances", id, "history"], &[]).await?;
    match format {
        Format::Json | Format::Yaml => super::print_data(format, &page),
        Format::Text => {
            let page: HistoryList = typed(&page, "the history")?;
            print!("{}", render::history_lines(&page.items, &chrono::Local))
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(ns: &str, name: &str, v: Option<&str>) -> WorkflowRef {
        WorkflowRef {
            namespace: ns.into(),
            name: name.into(),
            version: v.map(Into::into),
        }
    }

    #[test]
    fn workflow_refs() {
        let p = |s: &str| parse_workflow_ref(s, "default");
        assert_eq!(p("default/order"), Ok(r("default", "order", None)));
        assert_eq!(
            p("team/order@1.2.0-rc.1+b5"),
            Ok(r("team", "order", Some("1.2.0-rc.1+b5")))
        );
        // Without a namespace: the default one.
        assert_eq!(p("order@1"), Ok(r("default", "order", Some("1"))));
        assert_eq!(
            parse_workflow_ref("order", "ops"),
            Ok(r("ops", "order", None))
        );
        for bad in [
            "/order",
            "ns/",
            "ns/a/b",
            "ns/order@",
            "ns/order@1@2",
            "@1.0.0",
            "",
        ] {
            assert!(p(bad).is_err(), "{bad} should be refused");
        }
        assert_eq!(
            p("/order").unwrap_err(),
            "\"/order\" is not [NAMESPACE/]NAME[@VERSION]: the namespace is empty"
        );
    }

    #[test]
    fn list_query_maps_the_flags() {
        let f = ListArgs {
            namespace: Some("ns".into()),
            workflow: Some("wf".into()),
            status: Some("running".into()),
            limit: Some(5),
            ..Default::default()
        };
        let q = list_query(&f);
        assert_eq!(
            q,
            vec![
                ("namespace", "ns".into()),
                ("name", "wf".into()),
                ("status", "running".into()),
                ("limit", "5".into())
            ]
        );
    }

    #[test]
    fn an_instance_list_is_read_typed() {
        let page: InstanceList =
            typed(&json!({"items": [], "next": "abc"}), "the instance list").unwrap();
        assert_eq!(page.next.as_deref(), Some("abc"));
        let page: InstanceList = typed(&json!({"items": [], "next": null}), "x").unwrap();
        assert_eq!(page.next, None);
        // An answer without its items is an error, not an empty list.
        let e = typed::<InstanceList>(&json!({"next": null}), "the instance list").unwrap_err();
        assert!(e.render().contains("the instance list"), "{}", e.render());
    }
}
