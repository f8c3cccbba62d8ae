//! What the driver does for secrets and task confinement: secret values redacted from what is
//! kept for people, work rows of secret-reading workflows sealed, a task's own process limits
//! read from its settings.

use super::*;

impl Driver {
    /// Replaces every secret value in what is kept for people rather than for replay: an
    /// instance's output and error, and the lifecycle notices (task outputs shown in history
    /// and live streams). Deliveries keep their values: replay needs them as they were.
    pub(super) fn redact(&self, commits: &mut [Commit]) {
        let values = self.shared.secret_values();
        if values.is_empty() {
            return;
        }
        for c in commits.iter_mut() {
            if let Some((_, out, err)) = &mut c.status {
                for v in [out, err].into_iter().flatten() {
                    crate::secrets::redact(v, &values);
                }
            }
            for ev in &mut c.history {
                if ev.kind == "notice" {
                    crate::secrets::redact(&mut ev.data, &values);
                }
            }
        }
    }
}

/// A task's `metadata.kflow.limits` for the executor.
pub(super) fn task_limits(l: &kflow_dsl::settings::ProcessLimits) -> kflow_tasks::TaskLimits {
    let mb = |v: Option<u64>| v.map(|m| m.saturating_mul(1024 * 1024));
    kflow_tasks::TaskLimits {
        cpu_seconds: l.cpu_seconds,
        memory_bytes: mb(l.memory_mb),
        processes: l.processes,
        file_size_bytes: mb(l.file_size_mb),
        open_files: l.open_files,
        network: l.network,
    }
}

/// A work row's effect as stored: the calls and processes of a workflow that reads secrets
/// sealed (their resolved headers, bodies, arguments and environments may hold them), bound
/// to the row. A workflow that declares no secret cannot put one in an effect: its rows stay
/// as they are (sealing costs the driver a few microseconds per call).
pub(super) fn stored_effect(
    shared: &Shared,
    id: &str,
    effect: u64,
    e: &Effect,
    reads_secrets: bool,
) -> Value {
    let v = serde_json::to_value(e).unwrap_or(Value::Null);
    if e.is_call() && reads_secrets {
        shared
            .vault
            .seal_value(&crate::sealed::ctx_work(id, effect), &v)
    } else {
        v
    }
}
