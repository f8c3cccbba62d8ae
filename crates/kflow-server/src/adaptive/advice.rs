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
    out
}

fn kflow_server_queue(wf: &Workflow, task: &str) -> String {
    crate::engine::queue::task_hints(wf, task, 0).0
}
