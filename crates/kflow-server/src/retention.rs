//! Retention: finished instances older than the configured age are pruned, in small batches
//! (each one short transaction: the writer is never held for long), optionally archived first
//! as JSON lines in a gzip file per day; processed events are pruned too.
//!
//! An archive line is `{"instance": ..., "history": [...]}` as the API shows them. When
//! workflow data is sealed at rest (`encrypt_data`), the whole line is sealed with the master
//! key (`{"$sealed": ...}`), so that the archive holds no more in clear than the database. A
//! batch is deleted only after its lines are written and synced: a crash between the two
//! archives some instances twice, never loses one.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::engine::Engine;

/// Instances per batch (one transaction each).
const BATCH: u32 = 200;
/// Processed events per batch.
const EVENT_BATCH: u32 = 1_000;

#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct RetentionConfig {
    /// Completed, faulted and cancelled instances whose last change is older than this are
    /// pruned (with their histories). None: kept forever.
    pub finished_after_seconds: Option<u64>,
    /// Processed CloudEvents older than this are pruned. None: kept forever.
    pub events_after_seconds: Option<u64>,
    /// Where pruned instances are archived (`kflow-archive-YYYY-MM-DD.jsonl.gz`); None: not
    /// archived.
    pub archive_dir: Option<PathBuf>,
    /// How often retention runs (default 60 s).
    pub every_seconds: Option<u64>,
}

impl RetentionConfig {
    pub fn check(&self) -> Result<(), String> {
        for (k, v) in [
            ("finished_after_seconds", self.finished_after_seconds),
            ("events_after_seconds", self.events_after_seconds),
            ("every_seconds", self.every_seconds),
        ] {
            if v == Some(0) {
                return Err(format!("retention: {k} must be at least 1"));
            }
        }
        if self.archive_dir.is_some() && self.finished_after_seconds.is_none() {
            return Err("retention: archive_dir needs finished_after_seconds".into());
        }
        Ok(())
    }

    fn enabled(&self) -> bool {
        self.finished_after_seconds.is_some() || self.events_after_seconds.is_some()
    }
}

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub instances: usize,
    pub events: usize,
}

pub struct Retention {
    engine: Engine,
    config: RetentionConfig,
    seal: bool,
}

fn archive_file(dir: &std::path::Path, now_ms: i64) -> PathBuf {
    let day = kflow_core::time::iso8601(now_ms);
    dir.join(format!(
        "kflow-archive-{}.jsonl.gz",
        &day[..10.min(day.len())]
    ))
}

impl Retention {
    pub fn new(engine: Engine, config: RetentionConfig, seal: bool) -> Retention {
        Retention {
            engine,
            config,
            seal,
        }
    }

    /// Runs every `every_seconds` until aborted (nothing when nothing is configured).
    pub fn spawn(self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            if !self.config.enabled() {
                return;
            }
            let every = Duration::from_secs(self.config.every_seconds.unwrap_or(60));
            let me = Arc::new(self);
            loop {
                if !me.engine.is_leader() {
                    // Several nodes: one of them (the leader) prunes for all.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                let m = me.clone();
                let now = m.engine.now_ms();
                match tokio::task::spawn_blocking(move || m.pass(now)).await {
                    Ok(Ok(p)) if p.instances + p.events > 0 => tracing::info!(
                        instances = p.instances,
                        events = p.events,
                        "retention pruned"
                    ),
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "retention failed; trying again later")
                    }
                    Err(e) => tracing::warn!(error = %e, "retention panicked"),
                }
                tokio::time::sleep(every).await;
            }
        })
    }

    /// One pass (blocking): everything due at `now_ms`, batch by batch.
    pub fn pass(&self, now_ms: i64) -> Result<Pruned, String> {
        let store = self.engine.store();
        let mut pruned = Pruned::default();
        if let Some(age) = self.config.finished_after_seconds {
            let before = now_ms.saturating_sub((age.min(i64::MAX as u64 / 2000) * 1000) as i64);
            loop {
                let batch = store
                    .finished_before(before, BATCH)
                    .map_err(|e| e.to_string())?;
                if batch.is_empty() {
                    break;
                }
                if let Some(dir) = &self.config.archive_dir {
                    self.archive(dir, &batch, now_ms)?;
                }
                let ids: Vec<String> = batch.iter().map(|i| i.id.clone()).collect();
                pruned.instances += store.delete_instances(&ids).map_err(|e| e.to_string())?;
                if batch.len() < BATCH as usize {
                    break;
                }
                // Let the engine's commits through between batches.
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        if let Some(age) = self.config.events_after_seconds {
            let before = now_ms.saturating_sub((age.min(i64::MAX as u64 / 2000) * 1000) as i64);
            loop {
                let n = store
                    .prune_events(before, EVENT_BATCH)
                    .map_err(|e| e.to_string())?;
                pruned.events += n;
                if n < EVENT_BATCH as usize {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        Ok(pruned)
    }

    /// Appends the batch to the day's archive (a new gzip member per batch) and syncs it.
    fn archive(
        &self,
        dir: &std::path::Path,
        batch: &[kflow_store::Instance],
        now_ms: i64,
    ) -> Result<(), String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create the archive directory {}: {e}", dir.display()))?;
        let store = self.engine.store();
        let vault = self.engine.vault();
        let mut text = Vec::new();
        for inst in batch {
            let history = store
                .history(&inst.id, 0, u32::MAX)
                .map_err(|e| e.to_string())?;
            let mut line = json!({"instance": inst, "history": history});
            if self.seal {
                line = vault.seal_value(&format!("archive/{}", inst.id), &line);
            }
            serde_json::to_writer(&mut text, &line).map_err(|e| e.to_string())?;
            text.push(b'\n');
        }
        let path = archive_file(dir, now_ms);
        let mut options = std::fs::OpenOptions::new();
        options.create(true).append(true);
        // Workflow data: readable by the server's user alone, as the database is.
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options
            .open(&path)
            .map_err(|e| format!("cannot open the archive {}: {e}", path.display()))?;
        let mut gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
        let fail = |e: std::io::Error| format!("cannot write the archive {}: {e}", path.display());
        gz.write_all(&text).map_err(fail)?;
        let file = gz.finish().map_err(fail)?;
        file.sync_all().map_err(fail)?;
        Ok(())
    }
}

/// Reads an archive file back: its lines as JSON (sealed ones stay sealed).
pub fn read_archive(path: &std::path::Path) -> Result<Vec<Value>, String> {
    use std::io::BufRead;
    let file =
        std::fs::File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let reader = std::io::BufReader::new(flate2::read::MultiGzDecoder::new(file));
    let mut out = Vec::new();
    for line in reader.lines() {
        let line = line.map_err(|e| format!("{}: {e}", path.display()))?;
        out.push(serde_json::from_str(&line).map_err(|e| format!("{}: {e}", path.display()))?);
    }
    Ok(out)
}
