//! `explain`: why an instance is not done, per pending effect, DAG subtask held by its
//! dependencies, or instance queued under a concurrency limit.

use std::collections::HashMap;

use serde::Serialize;
use serde_json::Value;

use kflow_store::{Instance, InstanceStatus, StoreError};

use super::{Engine, EngineError, Result, journal, queue};

/// Why an instance is not done (the API shows it as `kflow_api::instances::Explanation`).
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    pub id: String,
    /// The instance's status.
    pub status: InstanceStatus,
    /// What it waits for; empty when nothing (a finished instance).
    pub waiting: Vec<WaitReason>,
    /// How its shell and script tasks are confined (in its namespace, on this server).
    pub isolation: String,
}

/// The confinement of a namespace's shell and script tasks, in one line.
pub fn isolation_of(cfg: &kflow_tasks::ExecConfig, namespace: &str) -> String {
    let Some(sb) = &cfg.sandbox else {
        return "shell and script tasks run unconfined: the server's sandbox is disabled".into();
    };
    if sb.forbid_namespaces.iter().any(|n| n == namespace) {
        return format!("shell and script tasks are forbidden in namespace {namespace}");
    }
    let user = match sb.user {
        kflow_tasks::TaskUser::Server => "as the server's user".to_string(),
        kflow_tasks::TaskUser::Fixed(u, _) => format!("as uid {u}"),
        kflow_tasks::TaskUser::Pool { .. } => "each as a user of its own".to_string(),
    };
    let lim =
        |v: Option<u64>, unit: &str| v.map_or("unlimited".to_string(), |v| format!("{v}{unit}"));
    let mb = |v: Option<u64>| v.map(|b| b / (1024 * 1024));
    let network = !sb.network || sb.no_network_namespaces.iter().any(|n| n == namespace);
    format!(
        "shell and script tasks run {user}, {}; cpu {}, memory {}, processes {}, file size {}, \
         open files {}, timeout {}; network {}",
        if sb.landlock {
            "Landlock: system directories read-only, a private folder"
        } else {
            "no file-system restriction"
        },
        lim(sb.cpu_seconds, " s"),
        lim(mb(sb.memory_bytes), " MiB"),
        lim(sb.processes, ""),
        lim(mb(sb.file_size_bytes), " MiB"),
        lim(sb.open_files, ""),
        lim(cfg.process_timeout.map(|d| d.as_secs()), " s"),
        if network { "off" } else { "on" },
    )
}

/// One thing an instance waits for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WaitReason {
    /// The waiting task's reference (a JSON pointer into the document); null for the whole
    /// instance (`concurrency`).
    pub task: Option<String>,
    /// The pending effect's id; absent for a DAG subtask that has not started and for the
    /// whole instance.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub effect: Option<u64>,
    /// The effect's kind (`timer`, `listen`, `workflow`, `call`, ...), `dependency` (a DAG
    /// subtask held by its dependencies) or `concurrency` (queued under a limit).
    pub kind: String,
    /// The reason in words.
    pub reason: String,
}

impl Engine {
    /// DAG subtasks that have not started because a dependency is not done yet, from the
    /// definition and the history's task notices.
    async fn dag_waits(&self, id: &str, inst: &Instance) -> Result<Vec<WaitReason>> {
        let wf = self
            .shared
            .workflow(&inst.namespace, &inst.name, &inst.version)?;
        let mut dags = Vec::new();
        find_dags(&wf.definition, String::new(), &mut dags);
        if dags.is_empty() {
            return Ok(Vec::new());
        }
        let id2 = id.to_string();
        let history = self.blocking(move |s| s.history(&id2, 0, u32::MAX)).await?;
        let mut started = std::collections::HashSet::new();
        let mut done = std::collections::HashSet::new();
        for rec in journal::decode_all(id, &history)
            .map_err(|e| EngineError::Store(StoreError::Corrupt(e.to_string())))?
        {
            let Some(n) = rec.notice() else { continue };
            let r = n.reference().unwrap_or_default().to_string();
            match n.kind() {
                "task.started" => {
                    started.insert(r);
                }
                "task.completed" | "task.faulted" | "task.skipped" => {
                    done.insert(r);
                }
                _ => {}
            }
        }
        let mut out = Vec::new();
        for (dag_ref, tasks) in dags {
            if !started.contains(&dag_ref) || done.contains(&dag_ref) {
                continue;
            }
            let refs: HashMap<String, String> = tasks
                .iter()
                .map(|(name, r, _)| (name.clone(), r.clone()))
                .collect();
            for (_, r, needs) in &tasks {
                if started.contains(r) || done.contains(r) {
                    continue;
                }
                let waiting: Vec<&str> = needs
                    .iter()
                    .filter(|n| refs.get(*n).is_none_or(|nr| !done.contains(nr)))
                    .map(String::as_str)
                    .collect();
                if !waiting.is_empty() {
                    out.push(WaitReason {
                        task: Some(r.clone()),
                        effect: None,
                        kind: "dependency".into(),
                        reason: format!("waiting for its dependencies: {}", waiting.join(", ")),
                    });
                }
            }
        }
        Ok(out)
    }

    /// Why an instance is not done: for each pending effect, what it is waiting for.
    pub async fn explain(&self, id: &str) -> Result<Explanation> {
        let view = self.instance(id).await?;
        let status = view.instance.status;
        let id2 = id.to_string();
        let work = self.blocking(move |s| s.work_of(&id2)).await?;
        let now = self.shared.now();
        // What was learned of its tasks' run times (p99, with 20 runs or more): a task running
        // far past it is named as an anomaly.
        let p99 = self
            .learned_p99(
                &view.instance.namespace,
                &view.instance.name,
                &view.instance.version,
            )
            .await
            .unwrap_or_default();
        let mut reasons = Vec::new();
        for w in work {
            let held = status == InstanceStatus::Suspended
                && self
                    .shared
                    .held
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .contains(&(w.instance_id.clone(), w.effect_id));
            let why = match w.kind.as_str() {
                "timer" if held => format!(
                    "the timer fired ({}); held until the instance is resumed",
                    kflow_core::time::iso8601(w.due_ms)
                ),
                _ if held => "answered; the answer is held until the instance is resumed".into(),
                "timer" => format!(
                    "waiting on a timer until {}",
                    kflow_core::time::iso8601(w.due_ms)
                ),
                "listen" => {
                    let filters = w.effect.get("filters").cloned().unwrap_or(Value::Null);
                    format!("waiting for an event matching {filters}")
                }
                "workflow" => format!("waiting for the sub-workflow {id}.{}", w.effect_id),
                "yield" => "used up its turn's task budget (limits.tasks_per_turn): continues \
                            in the engine's next turn"
                    .to_string(),
                _ => {
                    let q = self.shared.queue.lock();
                    if let Some(l) = q.lease_of(&w.instance_id, w.effect_id) {
                        let mut why = format!(
                            "running on worker {} (attempt {}, lease until {})",
                            l.worker,
                            w.attempts,
                            kflow_core::time::iso8601(l.expires_ms)
                        );
                        let ran = (super::now_ms() - l.leased_ms).max(0) as f64;
                        if let Some(p) = p99.get(&w.task).filter(|p| **p > 0.0 && ran > 3.0 * **p) {
                            why.push_str(&format!(
                                "; an anomaly: it has run {:.1} s, {:.0} × its learned p99 ({:.1} s)",
                                ran / 1e3,
                                ran / p,
                                p / 1e3
                            ));
                        }
                        why
                    } else if let Some(item) = q
                        .items()
                        .iter()
                        .find(|i| i.instance == w.instance_id && i.effect_id == w.effect_id)
                    {
                        format!(
                            "queued for {} ms: {}",
                            now - item.enqueued_ms,
                            queue::why_waiting(&q, item)
                        )
                    } else if status == InstanceStatus::Suspended {
                        "the instance is suspended".to_string()
                    } else {
                        "about to be dispatched".to_string()
                    }
                }
            };
            reasons.push(WaitReason {
                task: Some(w.task),
                effect: Some(w.effect_id),
                kind: w.kind,
                reason: why,
            });
        }
        if status == InstanceStatus::Running {
            reasons.extend(self.dag_waits(id, &view.instance).await?);
            let id2 = id.to_string();
            let head = self.blocking(move |s| s.history(&id2, 0, 2)).await?;
            let head = journal::decode_all(id, &head)
                .map_err(|e| EngineError::Store(StoreError::Corrupt(e.to_string())))?;
            let has = |f: fn(&journal::Record) -> bool| head.iter().any(f);
            if has(|r| matches!(r, journal::Record::Queued { .. }))
                && !has(|r| matches!(r, journal::Record::Started { .. }))
            {
                reasons.push(WaitReason {
                    task: None,
                    effect: None,
                    kind: "concurrency".into(),
                    reason: "waiting for a slot under the workflow's concurrency limit".into(),
                });
            }
        }
        Ok(Explanation {
            id: id.to_string(),
            status,
            waiting: reasons,
            isolation: isolation_of(&self.shared.config.executor, &view.instance.namespace),
        })
    }
}

/// Every `dag` task in a definition: its reference and (name, reference, needs) of its subtasks.
#[allow(clippy::type_complexity)]
fn find_dags(v: &Value, path: String, out: &mut Vec<(String, Vec<(String, String, Vec<String>)>)>) {
    match v {
        Value::Object(m) => {
            if let Some(tasks) = m
                .get("dag")
                .and_then(|d| d.get("tasks"))
                .and_then(Value::as_array)
            {
                let mut subs = Vec::new();
                for (i, item) in tasks.iter().enumerate() {
                    if let Some((name, body)) = item.as_object().and_then(|o| o.iter().next()) {
                        let needs = match body.get("needs") {
                            Some(Value::String(s)) => vec![s.clone()],
                            Some(Value::Array(a)) => a
                                .iter()
                                .filter_map(Value::as_str)
                                .map(str::to_string)
                                .collect(),
                            _ => Vec::new(),
                        };
                        subs.push((name.clone(), format!("{path}/dag/tasks/{i}/{name}"), needs));
                    }
                }
                out.push((path.clone(), subs));
            }
            for (k, child) in m {
                find_dags(
                    child,
                    format!("{path}/{}", k.replace('~', "~0").replace('/', "~1")),
                    out,
                );
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                find_dags(child, format!("{path}/{i}"), out);
            }
        }
        _ => {}
    }
}
