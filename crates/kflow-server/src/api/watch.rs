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
use super::types::{HistoryEventDto, InstanceDto, history_event, instance_dto};
use crate::engine::{Engine, LiveEvent};

/// How often an idle stream checks the instance's status anyway.
const RECHECK: Duration = Duration::from_secs(5);
const PAGE: u32 = 1000;

#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WatchQuery {
    /// Start after this history seq (a `Last-Event-ID` header wins).
    #[param(value_type = Option<i64>, minimum = 0)]
    pub after: Option<String>,
}

/// Streams an instance's history live (server-sent events).
#[utoipa::path(
    get,
    path = "/api/v1/instances/{id}/watch",
    tag = "instances",
    params(
        ("id" = String, Path, description = "Instance id"),
        ("Last-Event-ID" = Option<i64>, Header, description = "Resume after this history seq"),
        WatchQuery,
    ),
    responses(
        (status = 200, description = "`event: history` for each history event (data: a HistoryEventDto), then `event: end` (data: the instance) once it has finished", content_type = "text/event-stream", body = String),
        (status = 404, description = "No such instance", body = ErrorBody),
        (status = 429, description = "Too many live watchers, on the server or from this client", body = ErrorBody),
    )
)]
pub async fn watch_instance(
    State(st): State<AppState>,
    caller: crate::auth::Caller,
    ApiPath(id): ApiPath<String>,
    super::extract::ApiQuery(q): super::extract::ApiQuery<WatchQuery>,
    headers: HeaderMap,
    extensions: axum::http::Extensions,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    // Streams are capped per token (per address without authentication).
    let client = match &caller.token_id {
        Some(t) => format!("token {t}"),
        None => extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map_or_else(|| "local".to_string(), |c| c.0.ip().to_string()),
    };
    let id = super::instances::visible(&st, &caller, &id).await?;
    st.engine.instance(&id).await?;
    // Subscribe before reading the history: nothing committed from here on can be missed.
    let (live, guard) = st
        .engine
        .watch(&id, &client)
        .map_err(|e| ApiError::too_many(e.to_string()))?;
    // `Last-Event-ID` (a reconnecting browser) wins over `?after=` (where a page starts).
    let after = match headers.get("last-event-id") {
        None => match q.after.as_deref().filter(|a| !a.is_empty()) {
            None => 0,
            Some(a) => a
                .trim()
                .parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .ok_or_else(|| ApiError::invalid("invalid after: expected a history seq"))?,
        },
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .filter(|n| *n >= 0)
            .ok_or_else(|| ApiError::invalid("invalid Last-Event-ID: expected a history seq"))?,
    };
    let (tx, mut rx) = mpsc::channel::<Out>(16);
    tokio::spawn(async move {
        pump(st.engine.clone(), id, after, live, tx).await;
        // The feed is gone (moved into the pump); now the place can go.
        drop(guard);
    });
    let stream = futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx).map(|o| o.map(|o| Ok(o.into_event())))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// What the pump sends to the stream.
#[derive(Debug)]
pub(crate) enum Out {
    History(HistoryEventDto),
    End(Box<InstanceDto>),
    Error(ErrorBody),
}

impl Out {
    fn into_event(self) -> Event {
        fn json<T: serde::Serialize>(v: &T) -> String {
            serde_json::to_string(v).unwrap_or_else(|_| "null".into())
        }
        match self {
            Out::History(ev) => Event::default()
                .event("history")
                .id(ev.seq.to_string())
                .data(json(&ev)),
            Out::End(inst) => Event::default().event("end").data(json(&inst)),
            Out::Error(e) => Event::default().event("error").data(json(&e)),
        }
    }
}

struct Pump {
    engine: Engine,
    id: String,
    /// The seq of the last history event sent.
    last: i64,
    tx: mpsc::Sender<Out>,
}

/// Why the pump stops.
enum Stop {
    /// The client went away.
    Gone,
    /// The stream is over (end or error sent).
    Done,
}

pub(crate) async fn pump(
    engine: Engine,
    id: String,
    after: i64,
    mut live: broadcast::Receiver<LiveEvent>,
    tx: mpsc::Sender<Out>,
) {
    let mut p = Pump {
        engine,
        id,
        last: after,
        tx,
    };
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
                        self.send_history(history_event(ev.event)).await?;
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

    async fn send(&self, event: Out) -> Result<(), Stop> {
        self.tx.send(event).await.map_err(|_| Stop::Gone)
    }

    async fn send_history(&mut self, mut ev: HistoryEventDto) -> Result<(), Stop> {
        self.engine.redact(&mut ev.data);
        let seq = ev.seq;
        self.send(Out::History(ev)).await?;
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
                    self.send_history(history_event(ev)).await?;
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
        self.send(Out::End(Box::new(instance_dto(view.instance))))
            .await?;
        Err(Stop::Done)
    }

    async fn fail(&self, e: ApiError) -> Result<(), Stop> {
        let body = ErrorBody {
            error: ErrorDetail {
                code: e.code,
                message: e.message,
                details: e.details,
            },
        };
        self.send(Out::Error(body)).await?;
        Err(Stop::Done)
    }
}

/// Events after which the instance may have finished.
fn may_end(ev: &LiveEvent) -> bool {
    crate::engine::journal::Record::decode(&ev.instance_id, &ev.event).is_ok_and(|r| r.ends())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::{Value, json};

    use super::*;
    use crate::EngineConfig;
    use kflow_store::HistoryEvent;

    const DOC: &str = "document:\n  dsl: '1.0.3'\n  namespace: test\n  name: lag\n  version: '1.0.0'\ndo:\n  - a:\n      set:\n        x: 1\n  - nap:\n      wait: PT0.2S\n  - b:\n      set:\n        y: 2\n";

    async fn setup() -> (Engine, String) {
        let store = kflow_store::sqlite::SqliteStore::open_in_memory().expect("store");
        let engine = Engine::with_store(Arc::new(store), EngineConfig::default())
            .await
            .expect("engine");
        engine.register(DOC.as_bytes()).await.expect("register");
        let inst = engine
            .start("test", "lag", None, json!({}))
            .await
            .expect("start");
        (engine, inst.id)
    }

    async fn wait_finished(engine: &Engine, id: &str) {
        for _ in 0..500 {
            if engine
                .instance(id)
                .await
                .expect("instance")
                .instance
                .status
                .is_finished()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("instance {id} did not finish");
    }

    fn fake(id: &str, seq: i64) -> LiveEvent {
        LiveEvent {
            instance_id: id.into(),
            event: HistoryEvent {
                seq,
                time_ms: 0,
                kind: "fake".into(),
                data: Value::Null,
            },
        }
    }

    /// Drains the pump's output until it ends; checks seqs run 1..=N with no gap and the last is End.
    async fn collect(engine: &Engine, id: &str, rx: &mut mpsc::Receiver<Out>) {
        let mut seqs = Vec::new();
        let mut ended = false;
        while let Ok(Some(out)) = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
            match out {
                Out::History(ev) => {
                    assert!(!ended);
                    assert_ne!(
                        ev.kind, "fake",
                        "a feed event was passed on instead of the store's"
                    );
                    seqs.push(ev.seq);
                }
                Out::End(inst) => {
                    assert_eq!(inst.status, crate::api::types::Status::Completed);
                    ended = true;
                }
                Out::Error(e) => panic!("error event: {e:?}"),
            }
        }
        assert!(ended, "no end; got {seqs:?}");
        let all = engine.history(id, 0, 1000).await.expect("history");
        assert_eq!(seqs, all.iter().map(|e| e.seq).collect::<Vec<_>>());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lagging_feed_is_repaired_from_the_store() {
        let (engine, id) = setup().await;
        // A tiny feed, overflowed before the pump reads it, and again after the instance ends:
        // every wake-up is a `Lagged`, never a real event.
        let (feed, live) = broadcast::channel(2);
        for i in 0..5 {
            let _ = feed.send(fake("someone-else", i));
        }
        let (tx, mut rx) = mpsc::channel(64);
        let pump = tokio::spawn(pump(engine.clone(), id.clone(), 0, live, tx));
        wait_finished(&engine, &id).await;
        for i in 0..5 {
            let _ = feed.send(fake("someone-else", i));
        }
        collect(&engine, &id, &mut rx).await;
        let _ = pump.await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_gap_in_the_feed_is_filled_from_the_store() {
        let (engine, id) = setup().await;
        let (feed, live) = broadcast::channel(16);
        let (tx, mut rx) = mpsc::channel(64);
        let pump = tokio::spawn(pump(engine.clone(), id.clone(), 0, live, tx));
        wait_finished(&engine, &id).await;
        // Only a far-ahead seq of this instance arrives: the pump reads what it skipped.
        let _ = feed.send(fake(&id, 1000));
        collect(&engine, &id, &mut rx).await;
        let _ = pump.await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_pump_stops_when_the_client_goes() {
        let (engine, id) = setup().await;
        let (_feed, live) = broadcast::channel(16);
        let (tx, rx) = mpsc::channel(1);
        let pump = tokio::spawn(pump(engine.clone(), id.clone(), 0, live, tx));
        drop(rx);
        tokio::time::timeout(Duration::from_secs(5), pump)
            .await
            .expect("the pump ends")
            .expect("no panic");
    }
}
