//! Recommendations from learned statistics (`kflow analyze`), each with its evidence and the
//! line of the document it concerns. Only tasks with enough runs are judged (20).

use std::collections::HashMap;

use kflow_api::definitions::{Recommendation, TaskAnalysis};
use kflow_dsl::Workflow;
use kflow_dsl::model::{NamedTask, TaskKind, TaskList};

/// A task's document facts: its line, its timeout (ms, when a literal), and the line of the
/// `try` whose retry policy covers it.
#[derive(Debug, Default, Clone)]
struct Facts {
    line: Option<u32>,
    timeout_ms: Option<u64>,
    retried_by: Option<u32>,
}

fn walk(
    list: &TaskList,
    lines: &HashMap<String, u32>,
    retry_line: Option<u32>,
    out: &mut HashMap<String, Facts>,
) {
    for t in list.iter() {
        visit(t, lines, retry_line, out);
    }
}

fn visit(
    t: &NamedTask,
    lines: &HashMap<String, u32>,
    retry_line: Option<u32>,
    out: &mut HashMap<String, Facts>,
) {
    let timeout_ms = match &t.task.timeout {
        Some(kflow_dsl::duration::DurationSpec::Millis(ms)) => Some(*ms),
        _ => None,
    };
    out.insert(
        t.reference.clone(),
        Facts {
            line: lines.get(&t.reference).copied(),
            timeout_ms,
            retried_by: retry_line,
        },
    );
    match &t.task.kind {
        TaskKind::Do(l) => walk(l, lines, retry_line, out),
        TaskKind::For(f) => walk(&f.do_, lines, retry_line, out),
        TaskKind::Fork(f) => walk(&f.branches, lines, retry_line, out),
        TaskKind::Dag(d) => walk(&d.tasks, lines, retry_line, out),
        TaskKind::Try(tr) => {
            let here = if tr.catch.retry.is_some() {
                lines.get(&t.reference).copied().or(retry_line)
            } else {
                retry_line
            };
            walk(&tr.try_, lines, here, out);
            if let Some(d) = &tr.catch.do_ {
                walk(d, lines, retry_line, out);
            }
        }
        _ => {}
    }
}

/// Below this many runs a task is not judged.
const MIN_RUNS: u64 = 20;

/// The recommendations for one version: `wf` its compiled document, `source` its text (for the
/// lines), `tasks` what was learned of its tasks, `retry_ok` the retries of each task that
/// succeeded.
pub fn advise(
    wf: &Workflow,
    source: &str,
    tasks: &[TaskAnalysis],
    retry_ok: &HashMap<String, u64>,
) -> Vec<Recommendation> {
    let root = kflow_dsl::node::parse(source.as_bytes(), &kflow_dsl::node::Limits::default()).ok();
    let graph = kflow_dsl::graph::graph(wf, root.as_ref());
    let lines: HashMap<String, u32> = graph
        .nodes
        .iter()
        .filter_map(|n| Some((n.id.clone(), n.line?)))
        .collect();
    let mut facts = HashMap::new();
    walk(&wf.do_, &lines, None, &mut facts);
    let mut out = Vec::new();
    for t in tasks.iter().filter(|t| t.runs >= MIN_RUNS) {
        let f = facts.get(&t.task).cloned().unwrap_or_default();
        // Retries that almost never succeed.
        if t.retries >= 5 {
            let ok = retry_ok.get(&t.task).copied().unwrap_or(0);
            if (ok as f64) < 0.1 * t.retries as f64 {
                out.push(Recommendation {
                    kind: "useless-retries".into(),
                    task: t.task.clone(),
                    line: f.retried_by.or(f.line),
                    message: format!(
                        "retries of {} almost never succeed: reconsider the retry policy (or what \
                         the task calls)",
                        t.task
                    ),
                    evidence: format!("{ok} of {} retries succeeded", t.retries),
                });
            }
        }
        // Timeouts far from observed run times.
        if let Some(timeout) = f.timeout_ms {
            let timeout = timeout as f64;
            if t.run_ms.p99 > 0.0 && timeout > 20.0 * t.run_ms.p99 {
                out.push(Recommendation {
                    kind: "loose-timeout".into(),
                    task: t.task.clone(),
                    line: f.line,
                    message: format!(
                        "the timeout of {} is far above its run times: a stuck run holds its slot \
                         that long",
                        t.task
                    ),
                    evidence: format!(
                        "timeout {:.0} ms, p99 run time {:.1} ms ({} runs)",
                        timeout, t.run_ms.p99, t.runs
                    ),
                });
            } else if t.run_ms.p95 > 0.8 * timeout {
                out.push(Recommendation {
                    kind: "tight-timeout".into(),
                    task: t.task.clone(),
                    line: f.line,
                    message: format!(
                        "the timeout of {} is close to its usual run times: slow runs will time out",
                        t.task
                    ),
                    evidence: format!(
                        "timeout {:.0} ms, p95 run time {:.1} ms ({} runs)",
                        timeout, t.run_ms.p95, t.runs
                    ),
                });
            }
        }
        // A queue whose wait dominates.
        if t.wait_ms.p50 > t.run_ms.p50 && t.wait_ms.p50 > 50.0 {
            let queue = kflow_server_queue(wf, &t.task);
            out.push(Recommendation {
                kind: "queue-bound".into(),
                task: t.task.clone(),
                line: f.line,
                message: format!(
                    "{} waits for a worker longer than it runs: add capacity to queue {queue}",
                    t.task
                ),
                evidence: format!(
                    "median wait {:.1} ms, median run {:.1} ms ({} runs)",
                    t.wait_ms.p50, t.run_ms.p50, t.runs
                ),
            });
        }
    }
    if let Some(doc) = root.as_ref().map(|r| r.to_json()) {
        let by_task: HashMap<&str, &TaskAnalysis> = tasks
            .iter()
            .filter(|t| t.runs >= MIN_RUNS)
            .map(|t| (t.task.as_str(), t))
            .collect();
        let mut pairs = Vec::new();
        independent_pairs(&wf.do_, &doc, &mut pairs);
        for (a, b, why) in pairs {
            let (Some(ta), Some(tb)) = (by_task.get(a.as_str()), by_task.get(b.as_str())) else {
                continue;
            };
            let saved = ta.run_ms.p50.min(tb.run_ms.p50);
            if saved < MIN_PARALLEL_GAIN_MS {
                continue;
            }
            let line = |t: &str| {
                lines
                    .get(t)
                    .map(|l| format!(" (line {l})"))
                    .unwrap_or_default()
            };
            out.push(Recommendation {
                kind: "could-run-in-parallel".into(),
                task: b.clone(),
                line: lines.get(&a).copied(),
                message: format!(
                    "{a}{} and {b}{} have no data dependency: {b} reads nothing {a} produces, so \
                     both could run side by side in a fork (what follows then gets both outputs; \
                     keep the order if {b} relies on what {a} does outside the workflow)",
                    line(&a),
                    line(&b),
                ),
                evidence: format!(
                    "{why}; median run {:.1} ms and {:.1} ms: about {saved:.1} ms less per run \
                     ({} and {} runs)",
                    ta.run_ms.p50, tb.run_ms.p50, ta.runs, tb.runs
                ),
            });
        }
    }
    out
}

/// Below this saving per run (ms), running two tasks side by side is not suggested.
const MIN_PARALLEL_GAIN_MS: f64 = 5.0;

/// Pairs of tasks one after the other in a list, both calls or processes, the second reading
/// nothing the first produces (`doc` is the document as JSON, for the second's expressions):
/// `(first, second, why)` by task pointer.
fn independent_pairs(
    list: &TaskList,
    doc: &serde_json::Value,
    out: &mut Vec<(String, String, String)>,
) {
    let leaf = |t: &NamedTask| matches!(t.task.kind, TaskKind::Call(_) | TaskKind::Run(_));
    for w in list.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        if !leaf(a) || !leaf(b) || a.task.then != kflow_dsl::model::Flow::Continue {
            continue;
        }
        let Some(json) = doc.pointer(&b.reference) else {
            continue;
        };
        let exports = a.task.export.is_some();
        if reads_previous(json, exports, None) {
            continue;
        }
        let why = if exports {
            format!(
                "{} reads neither its input nor $context, which {} exports",
                b.reference, a.reference
            )
        } else {
            format!("{} reads nothing of its input", b.reference)
        };
        out.push((a.reference.clone(), b.reference.clone(), why));
    }
    for t in list.iter() {
        match &t.task.kind {
            TaskKind::Do(l) => independent_pairs(l, doc, out),
            TaskKind::For(f) => independent_pairs(&f.do_, doc, out),
            TaskKind::Fork(f) => independent_pairs(&f.branches, doc, out),
            TaskKind::Dag(d) => independent_pairs(&d.tasks, doc, out),
            TaskKind::Try(tr) => {
                independent_pairs(&tr.try_, doc, out);
                if let Some(d) = &tr.catch.do_ {
                    independent_pairs(d, doc, out);
                }
            }
            _ => {}
        }
    }
}

/// Whether a task (its JSON) may read what the task before it produced: its input (through an
/// expression, `$input`, a URI template's `{field}`, or a call or sub-workflow that takes the
/// input when given none), or `$context` when the task before exports. `key` is the key `v` is
/// found under. Its own `output`/`export` read its result, not its input, and are skipped.
/// Anything unsure counts as a read.
fn reads_previous(v: &serde_json::Value, exports: bool, key: Option<&str>) -> bool {
    use serde_json::Value;
    match v {
        Value::Object(m) => {
            // A sub-workflow or a function call given no input of its own gets this one.
            if m.contains_key("workflow") && m["workflow"].get("input").is_none()
                || m.get("call")
                    .and_then(Value::as_str)
                    .is_some_and(|c| !matches!(c, "http" | "openapi"))
                    && !m.contains_key("with")
            {
                return true;
            }
            m.iter()
                .filter(|(k, _)| !matches!(k.as_str(), "output" | "export" | "metadata" | "then"))
                .any(|(k, v)| reads_previous(v, exports, Some(k)))
        }
        Value::Array(a) => a.iter().any(|v| reads_previous(v, exports, key)),
        Value::String(s) => {
            let src = match kflow_dsl::expr::strip_dollar_braces(s) {
                Some(src) => src,
                // Bare expressions of `if:` and `input.from`.
                None if matches!(key, Some("if" | "from")) => s.as_str(),
                // A URI template fills `{field}` from the input.
                None if matches!(key, Some("endpoint" | "uri")) => return s.contains('{'),
                None => return false,
            };
            match kflow_dsl::expr::Expr::compile(src) {
                Ok(e) => {
                    e.reads_input()
                        || e.variables()
                            .any(|v| v == "input" || (exports && v == "context"))
                }
                Err(_) => true,
            }
        }
        _ => false,
    }
}

fn kflow_server_queue(wf: &Workflow, task: &str) -> String {
    crate::engine::queue::task_hints(wf, task, 0).0
}
