//! `GET /api/v1/instances/{id}/watch`: an instance's history as server-sent events.
//!
//! First every history event committed so far (`event: history`, `id:` the seq, data the
//! event as JSON), then the live ones as they are committed, then `event: end` (data: the
//! instance) once the instance has finished, and the stream closes. A `Last-Event-ID` header
//! (a seq) resumes after that event.
//!
//! The live feed is a broadcast channel shared by every instance; a receiver that falls behind
//! loses messages (`Lagged`). Whenever the feed skips a seq of this instance, or lags, the
//! missing events are read from the store, which always has them: the stream never has gaps.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, mpsc};

use super::AppState;
use super::error::{ApiError, ApiResult, ErrorBody, ErrorDetail};
use super::extract::ApiPath;
use super::types::{HistoryEventDto, InstanceDto};
use crate::engine::{Engine, LiveEvent};

/// How often an idle stream checks the instance's status anyway.
const RECHECK: Duration = Duration::from_secs(5);
const PAGE: u32 = 1000;

/// Streams an instance's history live (server-sent events).
#[utoipa::path(
    get,
    path = "/api/v1/instances/{id}/watch",
    tag = "instances",
    params(
        ("id" = String, Path, description = "Instance id"),
        ("Last-Event-ID" = Option<i64>, Header, description = "Resume after this history seq"),
    ),
    responses(
        (status = 200, description = "`event: history` for each history event (data: a HistoryEventDto), then `event: end` (data: the instance) once it has finished", content_type = "text/event-stream", body = String),
        (status = 404, description = "No such instance", body = ErrorBody),
    )
)]
pub async fn watch_instance(
    State(st): State<AppState>,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    // Subscribe before reading anything: nothing committed from here on can be missed.
    let live = st.engine.watch();
    st.engine.instance(&id).await?;
    let after = match headers.get("last-event-id") {
        None => 0,
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .filter(|n| *n >= 0)
            .ok_or_else(|| ApiError::invalid("invalid Last-Event-ID: expected a history seq"))?,
    };
    let (tx, mut rx) = mpsc::channel::<Event>(64);
    tokio::spawn(pump(st.engine.clone(), id, after, live, tx));
    let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx).map(|e| e.map(Ok)));
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

struct Pump {
    engine: Engine,
    id: String,
    /// The seq of the last history event sent.
    last: i64,
    tx: mpsc::Sender<Event>,
}

/// Why the pump stops.
enum Stop {
    /// The client went away.
    Gone,
    /// The stream is over (end or error sent).
    Done,
}

async fn pump(engine: Engine, id: String, after: i64, mut live: broadcast::Receiver<LiveEvent>, tx: mpsc::Sender<Event>) {
    let mut p = Pump { engine, id, last: after, tx };
    let _ = p.run(&mut live).await;
}

impl Pump {
    async fn run(&mut self, live: &mut broadcast::Receiver<LiveEvent>) -> Result<(), Stop> {
        self.catch_up().await?;
        self.check_finished().await?;
        let mut recheck = tokio::time::interval(RECHECK);
        recheck.reset();
        loop {
            tokio::select! {
                _ = self.tx.closed() => return Err(Stop::Gone),
                _ = recheck.tick() => {
                    self.catch_up().await?;
                    self.check_finished().await?;
                }
                r = live.recv() => match r {
                    Ok(ev) if ev.instance_id != self.id || ev.event.seq <= self.last => {}
                    Ok(ev) if ev.event.seq == self.last + 1 => {
                        let terminal = may_end(&ev);
                        self.send_history(HistoryEventDto::from(ev.event)).await?;
                        if terminal {
                            self.catch_up().await?;
                            self.check_finished().await?;
                        }
                    }
                    // A gap, or lag: the store has what the feed lost.
                    Ok(_) | Err(RecvError::Lagged(_)) => {
                        self.catch_up().await?;
                        self.check_finished().await?;
                    }
                    Err(RecvError::Closed) => {
                        // The engine is gone: send what is committed, then close.
                        self.catch_up().await?;
                        self.check_finished().await?;
                        return Err(Stop::Done);
                    }
                }
            }
        }
    }

    async fn send(&self, event: Event) -> Result<(), Stop> {
        self.tx.send(event).await.map_err(|_| Stop::Gone)
    }

    async fn send_history(&mut self, ev: HistoryEventDto) -> Result<(), Stop> {
        let seq = ev.seq;
        let data = serde_json::to_string(&ev).unwrap_or_else(|_| "null".into());
        self.send(Event::default().event("history").id(seq.to_string()).data(data)).await?;
        self.last = seq;
        Ok(())
    }

    /// Sends every committed event after `last`.
    async fn catch_up(&mut self) -> Result<(), Stop> {
        loop {
            let page = match self.engine.history(&self.id, self.last, PAGE).await {
                Ok(p) => p,
                Err(e) => return self.fail(e.into()).await,
            };
            let full = page.len() as u32 >= PAGE;
            for ev in page {
                if ev.seq > self.last {
                    self.send_history(ev.into()).await?;
                }
            }
            if !full {
                return Ok(());
            }
        }
    }

    /// Sends `end` (and stops) if the instance has finished.
    async fn check_finished(&mut self) -> Result<(), Stop> {
        let view = match self.engine.instance(&self.id).await {
            Ok(v) => v,
            Err(e) => return self.fail(e.into()).await,
        };
        if !view.instance.status.is_finished() {
            return Ok(());
        }
        // Finished: nothing more will be committed; send what the feed has not delivered yet.
        self.catch_up().await?;
        let data = serde_json::to_string(&InstanceDto::from(view.instance)).unwrap_or_else(|_| "null".into());
        self.send(Event::default().event("end").data(data)).await?;
        Err(Stop::Done)
    }

    async fn fail(&self, e: ApiError) -> Result<(), Stop> {
        let body = ErrorBody { error: ErrorDetail { code: e.code, message: e.message, details: e.details } };
        let data = serde_json::to_string(&body).unwrap_or_else(|_| "null".into());
        self.send(Event::default().event("error").data(data)).await?;
        Err(Stop::Done)
    }
}

/// Events after which the instance may have finished.
fn may_end(ev: &LiveEvent) -> bool {
    let e = &ev.event;
    if e.kind == "cancelled" {
        return true;
    }
    e.kind == "notice"
        && e.data
            .get("type")
            .and_then(|t| t.as_str())
            .is_some_and(|t| matches!(t, "workflow.completed" | "workflow.faulted" | "workflow.cancelled"))
}
