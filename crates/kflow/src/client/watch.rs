//! Following an instance to its end: the `--wait` and `--watch` options of `kflow start`.
//!
//! [`follow`] reads the instance's `/watch` stream of history items. On a terminal it redraws
//! one status line (tasks done, the task running now, elapsed time) and keeps notable events
//! (faults, retries, suspensions) as lines above it; otherwise it prints one plain line per
//! lifecycle event; quietly it prints nothing. When the stream ends (or drops) it fetches the
//! instance: a finished one is returned, otherwise it reconnects, skipping items it has
//! already seen by their `seq`. A server without the watch endpoint is polled instead.

use std::io::Write;
use std::time::{Duration, Instant};

use serde_json::Value;

use kflow_api::instances::{HistoryEventDto, InstanceDto};

use super::http::{Api, Failure, typed};
use super::render::{clip, fmt_clock, notice_summary, scalar};
use super::sse::{SseEvent, SseParser};

/// How progress is shown (always on stderr).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Quiet,
    Lines,
    StatusLine,
}

/// The instance now, read as the wire type it must be.
async fn instance(api: &Api, id: &str) -> Result<InstanceDto, Failure> {
    typed(&api.get(&["instances", id], &[]).await?, "the instance")
}

/// What the stream has told so far.
#[derive(Debug, Default)]
pub struct Progress {
    pub done: usize,
    /// References of the tasks started and not yet ended, oldest first.
    pub running: Vec<String>,
    /// `suspended` while suspended, the workflow's end once known.
    pub state: Option<String>,
    last_seq: Option<i64>,
    /// Per task reference: its name path (`guard/risky`) and kind (`wait`, `call http`), from
    /// the workflow's graph, to show tasks by name and waits as waits.
    pub tasks: std::collections::HashMap<String, (String, String)>,
    /// The task whose failure is being retried (back-off), until it starts again.
    pub retrying: Option<String>,
}

impl Progress {
    /// Takes one history item; false when it was already seen (a replay after reconnecting).
    pub fn apply(&mut self, item: &HistoryEventDto) -> bool {
        if self.last_seq.is_some_and(|last| item.seq <= last) {
            return false;
        }
        self.last_seq = Some(item.seq);
        let data = &item.data;
        match item.kind.as_str() {
            "notice" => {
                let ty = data.get("type").and_then(Value::as_str).unwrap_or("");
                let reference = data
                    .get("reference")
                    .or_else(|| data.get("task"))
                    .map(scalar)
                    .unwrap_or_default();
                match ty {
                    "task.started" => {
                        if self.retrying.as_deref() == Some(reference.as_str()) {
                            self.retrying = None;
                        }
                        self.running.retain(|r| *r != reference);
                        self.running.push(reference);
                    }
                    "task.retried" => self.retrying = Some(reference),
                    "task.completed" | "task.faulted" | "task.skipped" | "task.cancelled" => {
                        self.running.retain(|r| *r != reference);
                        if ty == "task.completed" {
                            self.done += 1;
                        }
                    }
                    _ => {
                        if let Some(end) = ty.strip_prefix("workflow.").filter(|e| *e != "started")
                        {
                            self.state = Some(end.to_owned());
                            self.running.clear();
                        }
                    }
                }
            }
            "suspended" => self.state = Some("suspended".into()),
            "resumed" => self.state = None,
            "cancelled" => self.state = Some("cancelled".into()),
            _ => {}
        }
        true
    }

    /// A task by its name path when the graph is known, else its reference.
    pub fn label(&self, reference: &str) -> String {
        self.tasks
            .get(reference)
            .map(|(path, _)| path.clone())
            .unwrap_or_else(|| reference.to_string())
    }

    /// `⠹ 3 done · running fetch (+1 more) · 12.3s`, at most `width` characters; a `wait` or
    /// `listen` task reads `waiting on nap`, a failed task waiting for its retry `retrying`.
    pub fn status_line(&self, elapsed: Duration, width: usize) -> String {
        const SPIN: [char; 10] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
        let frame = SPIN[(elapsed.as_millis() / 100) as usize % SPIN.len()];
        let mut s = format!("{frame} {} done", self.done);
        if let Some(state) = &self.state {
            s.push_str(&format!(" · {state}"));
        }
        if let Some(r) = &self.retrying {
            s.push_str(&format!(" · retrying {} (back-off)", self.label(r)));
        } else if let Some(now) = self.running.last() {
            let kind = self.tasks.get(now).map(|(_, k)| k.as_str()).unwrap_or("");
            let verb = if kind == "wait" || kind == "listen" {
                "waiting on"
            } else {
                "running"
            };
            s.push_str(&format!(" · {verb} {}", self.label(now)));
            if self.running.len() > 1 {
                s.push_str(&format!(" (+{} more)", self.running.len() - 1));
            }
        }
        s.push_str(&format!(" · {:.1}s", elapsed.as_secs_f64()));
        clip(&s, width)
    }
}

/// [`plain_line`] with task references shown by their name path (`task.started guard/risky`).
pub fn named_line(item: &HistoryEventDto, p: &Progress) -> Option<String> {
    let line = plain_line(item)?;
    match item.data.get("reference").and_then(Value::as_str) {
        Some(r) if p.tasks.contains_key(r) => Some(line.replace(r, &p.label(r))),
        _ => Some(line),
    }
}

/// `12:00:01.123 task.started /do/0/x` for lifecycle notices and operator actions; `None`
/// for the engine's internal records (start input, effect deliveries).
pub fn plain_line(item: &HistoryEventDto) -> Option<String> {
    let data = &item.data;
    let kind = item.kind.as_str();
    let at = Value::from(item.time_ms);
    let (time, what) = match kind {
        // A notice's own time (when the task did it) before the record's.
        "notice" => (data.get("time").unwrap_or(&at), notice_summary(data)),
        "cancelled" | "suspended" | "resumed" => (&at, format!("instance.{kind}")),
        _ => return None,
    };
    Some(format!("{} {what}", fmt_clock(time)))
}

/// Whether a terminal user should keep this event's line above the status line.
fn notable(item: &HistoryEventDto) -> bool {
    let kind = item.kind.as_str();
    let ty = item.data.get("type").and_then(Value::as_str).unwrap_or("");
    let operator_action = !matches!(kind, "notice" | "started" | "delivery");
    operator_action || ty.ends_with(".faulted") || ty == "task.retried"
}

fn term_width() -> usize {
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse::<usize>().ok())
        .filter(|w| *w > 10)
        .unwrap_or(80)
        - 1
}

struct Screen {
    mode: Mode,
    start: Instant,
    drawn: bool,
}

impl Screen {
    fn show(&mut self, p: &Progress) {
        if self.mode == Mode::StatusLine {
            let mut err = std::io::stderr().lock();
            let _ = write!(
                err,
                "\r\x1b[2K{}",
                p.status_line(self.start.elapsed(), term_width())
            );
            let _ = err.flush();
            self.drawn = true;
        }
    }

    fn item(&mut self, item: &HistoryEventDto, p: &Progress) {
        match self.mode {
            Mode::Quiet => {}
            Mode::Lines => {
                if let Some(line) = named_line(item, p) {
                    eprintln!("{line}");
                }
            }
            Mode::StatusLine => {
                if notable(item)
                    && let Some(line) = named_line(item, p)
                {
                    self.clear();
                    eprintln!("{line}");
                }
                self.show(p);
            }
        }
    }

    fn clear(&mut self) {
        if self.drawn {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
            self.drawn = false;
        }
    }
}

/// Follows instance `id` until it has finished; returns the finished instance.
pub async fn follow(api: &Api, id: &str, mode: Mode) -> Result<InstanceDto, Failure> {
    let mut screen = Screen {
        mode,
        start: Instant::now(),
        drawn: false,
    };
    let mut progress = Progress::default();
    // Names and kinds of the tasks, from the workflow's graph (best effort: without it,
    // references are shown).
    if mode != Mode::Quiet
        && let Ok(inst) = instance(api, id).await
        && let Ok(g) = api
            .get(
                &[
                    "definitions",
                    &inst.namespace,
                    &inst.name,
                    "versions",
                    &inst.version,
                    "graph",
                ],
                &[],
            )
            .await
        && let Ok(g) = serde_json::from_value::<kflow_api::definitions::Graph>(g)
    {
        progress.tasks = g
            .nodes
            .into_iter()
            .map(|n| (n.id, (n.path, n.kind)))
            .collect();
    }
    let mut backoff = Duration::from_millis(200);
    loop {
        let mut resp = match api.stream(&["instances", id, "watch"]).await {
            Ok(r) => r,
            Err(Failure::Api {
                status: 404 | 405 | 501,
                ..
            }) => {
                screen.clear();
                return poll(api, id).await;
            }
            Err(e) => {
                screen.clear();
                return Err(e);
            }
        };
        screen.show(&progress);
        let mut parser = SseParser::new();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut heard = false;
        'read: loop {
            let events: Vec<SseEvent> = tokio::select! {
                chunk = resp.chunk() => match chunk {
                    Ok(Some(bytes)) => parser.feed(&bytes),
                    Ok(None) | Err(_) => {
                        let rest = parser.finish();
                        if rest.is_empty() { break 'read; }
                        rest
                    }
                },
                _ = tick.tick(), if mode == Mode::StatusLine => {
                    screen.show(&progress);
                    continue;
                }
            };
            for ev in events {
                heard = true;
                match ev.event.as_str() {
                    "history" => {
                        let item: HistoryEventDto = match serde_json::from_str(&ev.data) {
                            Ok(item) => item,
                            Err(e) => {
                                screen.clear();
                                return Err(Failure::Protocol(format!(
                                    "the server's history event is not understood: {e}"
                                )));
                            }
                        };
                        if progress.apply(&item) {
                            screen.item(&item, &progress);
                        }
                    }
                    "end" => break 'read,
                    _ => {}
                }
            }
        }
        drop(resp);
        let inst = instance(api, id).await.inspect_err(|_| screen.clear())?;
        if inst.status.is_finished() {
            screen.clear();
            if mode == Mode::StatusLine {
                let secs = screen.start.elapsed().as_secs_f64();
                eprintln!(
                    "{} · {} done · {secs:.1}s",
                    inst.status.as_str(),
                    progress.done
                );
            }
            return Ok(inst);
        }
        if heard {
            backoff = Duration::from_millis(200);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Polls instance `id` (100 ms, doubling to 1 s) until it has finished.
pub async fn poll(api: &Api, id: &str) -> Result<InstanceDto, Failure> {
    let mut delay = Duration::from_millis(100);
    loop {
        let inst = instance(api, id).await?;
        if inst.status.is_finished() {
            return Ok(inst);
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A history event from the fields given (the others empty).
    fn ev(v: Value) -> HistoryEventDto {
        let mut full = json!({"seq": 0, "time": "", "time_ms": 0, "kind": "", "data": null});
        for (k, x) in v.as_object().unwrap() {
            full[k] = x.clone();
        }
        serde_json::from_value(full).unwrap()
    }

    fn notice(seq: i64, ty: &str, r: &str) -> HistoryEventDto {
        ev(json!({"seq": seq, "kind": "notice",
               "data": {"type": ty, "task": r.rsplit('/').next(), "reference": r, "time": "1970-01-01T00:00:00Z"}}))
    }

    #[test]
    fn progress_counts_and_tracks_running_tasks() {
        let mut p = Progress::default();
        assert!(p.apply(&ev(
            json!({"seq": 1, "kind": "started", "data": {"input": {}}})
        )));
        assert!(p.apply(&notice(2, "task.started", "/do/0/a")));
        assert!(p.apply(&notice(3, "task.started", "/do/0/a/fork/branches/0/b")));
        assert_eq!(p.running, ["/do/0/a", "/do/0/a/fork/branches/0/b"]);
        assert_eq!(
            p.status_line(Duration::from_millis(1234), 80),
            "⠹ 0 done · running /do/0/a/fork/branches/0/b (+1 more) · 1.2s"
        );
        assert!(p.apply(&notice(4, "task.completed", "/do/0/a/fork/branches/0/b")));
        assert!(
            !p.apply(&notice(3, "task.started", "/do/0/a/fork/branches/0/b")),
            "replayed items are skipped"
        );
        assert!(p.apply(&ev(json!({"seq": 5, "kind": "suspended", "data": null}))));
        assert_eq!(
            p.status_line(Duration::from_secs(3), 80),
            "⠋ 1 done · suspended · running /do/0/a · 3.0s"
        );
        assert_eq!(p.status_line(Duration::from_secs(3), 12), "⠋ 1 done · …");
        assert!(p.apply(&ev(json!({"seq": 6, "kind": "resumed"}))));
        assert!(p.apply(&notice(7, "task.completed", "/do/0/a")));
        assert!(p.apply(&ev(
            json!({"seq": 8, "kind": "notice", "data": {"type": "workflow.completed"}})
        )));
        assert_eq!(
            (p.done, p.running.len(), p.state.as_deref()),
            (2, 0, Some("completed"))
        );
    }

    #[test]
    fn plain_lines_only_for_lifecycle_events() {
        let line = plain_line(&notice(2, "task.started", "/do/0/x")).unwrap();
        // The clock is local time; only its shape is fixed.
        let (clock, rest) = line.split_once(' ').unwrap();
        assert_eq!(
            (clock.len(), clock.as_bytes()[2], clock.as_bytes()[8]),
            (12, b':', b'.')
        );
        assert_eq!(rest, "task.started /do/0/x");
        assert!(plain_line(&ev(json!({"seq": 1, "kind": "delivery", "data": {}}))).is_none());
        assert!(
            plain_line(&ev(json!({"seq": 1, "kind": "cancelled"})))
                .unwrap()
                .ends_with(" instance.cancelled")
        );
        assert!(notable(&ev(json!({"kind": "suspended"}))));
        assert!(notable(&notice(1, "task.faulted", "/do/0/x")));
        assert!(!notable(&notice(1, "task.completed", "/do/0/x")));
    }

    #[test]
    fn tasks_show_by_name_and_waits_as_waits() {
        let mut p = Progress::default();
        p.tasks
            .insert("/do/0/nap".into(), ("nap".into(), "wait".into()));
        p.tasks.insert(
            "/do/1/guard/try/0/fetch".into(),
            ("guard/fetch".into(), "call http".into()),
        );
        assert!(p.apply(&notice(2, "task.started", "/do/0/nap")));
        let line = p.status_line(Duration::from_secs(1), 200);
        assert!(line.contains("waiting on nap"), "{line}");
        assert!(p.apply(&notice(3, "task.completed", "/do/0/nap")));
        assert!(p.apply(&notice(4, "task.started", "/do/1/guard/try/0/fetch")));
        assert!(
            p.status_line(Duration::from_secs(1), 200)
                .contains("running guard/fetch")
        );
        assert!(p.apply(&notice(5, "task.retried", "/do/1/guard/try/0/fetch")));
        let line = p.status_line(Duration::from_secs(1), 200);
        assert!(line.contains("retrying guard/fetch (back-off)"), "{line}");
        assert!(p.apply(&notice(6, "task.started", "/do/1/guard/try/0/fetch")));
        assert!(
            p.status_line(Duration::from_secs(1), 200)
                .contains("running guard/fetch")
        );
        let line = named_line(&notice(7, "task.completed", "/do/1/guard/try/0/fetch"), &p).unwrap();
        assert!(line.ends_with("task.completed guard/fetch"), "{line}");
    }
}
