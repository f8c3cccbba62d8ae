//! `kflow defs ls|get|deprecate`: the registered workflow definitions and their versions.

use std::process::ExitCode;

use clap::Subcommand;
use serde_json::{Value, json};

use kflow_api::definitions::{Analysis, DefinitionDetail, DefinitionDiff, DefinitionList};

use super::http::{Api, Failure, typed};
use super::verbs::{default_namespace, parse_workflow_ref};
use super::{OutputArgs, ServerArgs, print_data, render};

#[derive(Subcommand, Debug)]
pub enum DefsCommand {
    /// List every registered version (newest registrations last), deprecated ones marked.
    Ls {
        /// Only this namespace.
        #[arg(long)]
        namespace: Option<String>,
        #[command(flatten)]
        out: OutputArgs,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Print a definition's document as registered (the latest version without @VERSION).
    Get {
        /// [NS/]NAME[@VERSION]
        workflow: String,
        #[command(flatten)]
        out: OutputArgs,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Deprecate a version: it starts no new instances (running ones go on). `--undo` lifts it.
    Deprecate {
        /// [NS/]NAME@VERSION
        workflow: String,
        #[arg(long)]
        undo: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
}

pub async fn run(cmd: DefsCommand) -> Result<ExitCode, Failure> {
    match cmd {
        DefsCommand::Ls {
            namespace,
            out,
            server,
        } => {
            let q: Vec<(&str, String)> = namespace.map(|n| ("namespace", n)).into_iter().collect();
            let v = Api::new(&server)?.get(&["definitions"], &q).await?;
            if out.output.is_data() {
                print_data(out.output, &v);
                return Ok(ExitCode::SUCCESS);
            }
            let list: DefinitionList = typed(&v, "the definitions")?;
            let rows: Vec<Vec<String>> = list
                .items
                .into_iter()
                .map(|d| {
                    vec![
                        format!("{}/{}", d.namespace, d.name),
                        d.version,
                        if d.deprecated { "yes" } else { "no" }.into(),
                        render::fmt_datetime(&Value::from(d.created_ms)),
                        d.hash.chars().take(12).collect(),
                    ]
                })
                .collect();
            print!(
                "{}",
                render::table(
                    &["WORKFLOW", "VERSION", "DEPRECATED", "REGISTERED", "HASH"],
                    &rows
                )
            );
            Ok(ExitCode::SUCCESS)
        }
        DefsCommand::Get {
            workflow,
            out,
            server,
        } => {
            let wf = parse_workflow_ref(&workflow, &default_namespace()).map_err(Failure::Usage)?;
            let api = Api::new(&server)?;
            let v = match &wf.version {
                Some(version) => {
                    api.get(
                        &["definitions", &wf.namespace, &wf.name, "versions", version],
                        &[],
                    )
                    .await?
                }
                None => {
                    api.get(&["definitions", &wf.namespace, &wf.name], &[])
                        .await?
                }
            };
            if out.output.is_data() {
                print_data(out.output, &v);
            } else {
                let d: DefinitionDetail = typed(&v, "the definition")?;
                print!("{}", d.source);
                if !d.source.ends_with('\n') {
                    println!();
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        DefsCommand::Deprecate {
            workflow,
            undo,
            server,
        } => {
            let wf = parse_workflow_ref(&workflow, &default_namespace()).map_err(Failure::Usage)?;
            let Some(version) = &wf.version else {
                return Err(Failure::Usage(format!(
                    "{workflow:?}: name the version to deprecate (NAME@VERSION)"
                )));
            };
            Api::new(&server)?
                .post_json(
                    &[
                        "definitions",
                        &wf.namespace,
                        &wf.name,
                        "versions",
                        version,
                        "deprecate",
                    ],
                    &json!({ "deprecated": !undo }),
                )
                .await?;
            println!(
                "{}/{}@{version} {}",
                wf.namespace,
                wf.name,
                if undo { "undeprecated" } else { "deprecated" }
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `kflow diff [NS/]NAME[@V1] [V2]`.
pub async fn diff(
    workflow: &str,
    to: Option<String>,
    out: OutputArgs,
    server: ServerArgs,
) -> Result<ExitCode, Failure> {
    let wf = parse_workflow_ref(workflow, &default_namespace()).map_err(Failure::Usage)?;
    let mut q: Vec<(&str, String)> = Vec::new();
    if let Some(from) = wf.version {
        q.push(("from", from));
    }
    if let Some(to) = to {
        q.push(("to", to));
    }
    let v = Api::new(&server)?
        .get(&["definitions", &wf.namespace, &wf.name, "diff"], &q)
        .await?;
    if out.output.is_data() {
        print_data(out.output, &v);
        return Ok(ExitCode::SUCCESS);
    }
    let d: DefinitionDiff = typed(&v, "the diff")?;
    print!("{}", render_diff(&d));
    Ok(ExitCode::SUCCESS)
}

/// `kflow analyze [NS/]NAME[@VERSION]`.
pub async fn analyze(
    workflow: &str,
    out: OutputArgs,
    server: ServerArgs,
) -> Result<ExitCode, Failure> {
    let wf = parse_workflow_ref(workflow, &default_namespace()).map_err(Failure::Usage)?;
    let mut q: Vec<(&str, String)> = Vec::new();
    if let Some(v) = &wf.version {
        q.push(("version", v.clone()));
    }
    let v = Api::new(&server)?
        .get(&["definitions", &wf.namespace, &wf.name, "analysis"], &q)
        .await?;
    if out.output.is_data() {
        print_data(out.output, &v);
        return Ok(ExitCode::SUCCESS);
    }
    let a: Analysis = typed(&v, "the analysis")?;
    print!("{}", render_analysis(&a));
    Ok(ExitCode::SUCCESS)
}

/// The analysis as tables, one per version, newest first.
fn render_analysis(a: &Analysis) -> String {
    if a.versions.is_empty() {
        return format!(
            "{}/{}: no runs learned yet (run times are learned as tasks finish; until then \
             dispatch is first come, first served and timeouts are as configured)\n",
            a.namespace, a.name
        );
    }
    let mut s = String::new();
    for v in &a.versions {
        s.push_str(&format!("{}/{}@{}\n", a.namespace, a.name, v.version));
        let rows: Vec<Vec<String>> = v
            .tasks
            .iter()
            .map(|t| {
                vec![
                    t.task.clone(),
                    format!("{}{}", t.runs, if t.confident { "" } else { " (few)" }),
                    format!(
                        "{:.1} / {:.1} / {:.1}",
                        t.run_ms.p50, t.run_ms.p95, t.run_ms.p99
                    ),
                    format!(
                        "{:.1} / {:.1} / {:.1}",
                        t.wait_ms.p50, t.wait_ms.p95, t.wait_ms.p99
                    ),
                    format!("{:.0}%", t.failure_rate * 100.0),
                    format!("{:.0}%", t.retry_rate * 100.0),
                ]
            })
            .collect();
        s.push_str(&render::table(
            &[
                "TASK",
                "RUNS",
                "RUN MS p50/p95/p99",
                "WAIT MS p50/p95/p99",
                "FAILED",
                "RETRIES",
            ],
            &rows,
        ));
        if !v.critical_path.is_empty() && v.task_time_ms > 0.0 {
            s.push_str(&format!(
                "  critical path (p50): {:.1} ms, {:.0}% of {:.1} ms of task time: {}\n",
                v.critical_path_ms,
                v.critical_path_ms / v.task_time_ms * 100.0,
                v.task_time_ms,
                v.critical_path.join(" -> ")
            ));
        }
        let hot: Vec<String> = v
            .hot_spots
            .iter()
            .filter_map(|h| v.tasks.iter().find(|t| &t.task == h))
            .map(|t| {
                format!(
                    "{} ({:.0}% failed, {:.0}% retried)",
                    t.task,
                    t.failure_rate * 100.0,
                    t.retry_rate * 100.0
                )
            })
            .collect();
        if !hot.is_empty() {
            s.push_str(&format!("  hot spots: {}\n", hot.join(", ")));
        }
        for r in &v.recommendations {
            let at = r.line.map(|l| format!("line {l}: ")).unwrap_or_default();
            s.push_str(&format!("  ! {at}{} ({})\n", r.message, r.evidence));
        }
    }
    s
}

/// The diff as text: a header, the tasks, then the text hunks.
fn render_diff(d: &DefinitionDiff) -> String {
    let mut s = format!(
        "--- {ns}/{n}@{from}\n+++ {ns}/{n}@{to}\n",
        ns = d.namespace,
        n = d.name,
        from = d.from,
        to = d.to
    );
    if d.added.is_empty() && d.removed.is_empty() && d.changed.is_empty() {
        s.push_str("tasks: no change\n");
    }
    for (mark, what, list) in [
        ("+", "added", &d.added),
        ("-", "removed", &d.removed),
        ("~", "changed", &d.changed),
    ] {
        for t in list {
            s.push_str(&format!("task {mark} {t} ({what})\n"));
        }
    }
    if d.lines.is_empty() {
        s.push_str("text: the same\n");
    }
    let mut first = true;
    for l in &d.lines {
        if first || l.op == "@" {
            // A hunk starts: say where.
            let at = d
                .lines
                .iter()
                .skip_while(|x| !std::ptr::eq(*x, l))
                .find(|x| x.op != "@");
            if let Some(at) = at {
                s.push_str(&format!(
                    "@@ -{} +{} @@\n",
                    at.old.map_or("-".into(), |n| n.to_string()),
                    at.new.map_or("-".into(), |n| n.to_string())
                ));
            }
            first = false;
            if l.op == "@" {
                continue;
            }
        }
        s.push_str(&format!("{}{}\n", l.op, l.text));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use kflow_api::definitions::DiffLine;

    fn line(op: &str, old: Option<u32>, new: Option<u32>, text: &str) -> DiffLine {
        DiffLine {
            op: op.into(),
            old,
            new,
            text: text.into(),
        }
    }

    #[test]
    fn a_diff_reads_as_tasks_then_hunks() {
        let d = DefinitionDiff {
            namespace: "shop".into(),
            name: "order".into(),
            from: "1.0.0".into(),
            to: "1.1.0".into(),
            lines: vec![
                line(" ", Some(4), Some(4), "  version: x"),
                line("-", Some(5), None, "  a: 1"),
                line("+", None, Some(5), "  a: 2"),
                line("@", None, None, "…"),
                line(" ", Some(20), Some(20), "  z: 1"),
            ],
            added: vec!["extra".into()],
            removed: vec![],
            changed: vec!["greet".into()],
        };
        expect_test::expect![[r#"
            --- shop/order@1.0.0
            +++ shop/order@1.1.0
            task + extra (added)
            task ~ greet (changed)
            @@ -4 +4 @@
               version: x
            -  a: 1
            +  a: 2
            @@ -20 +20 @@
               z: 1
        "#]]
        .assert_eq(&render_diff(&d));
    }
}
