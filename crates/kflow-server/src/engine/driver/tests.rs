//! The driver's decisions without its loop: messages in, a batch out (the commits to write and
//! what to do once they are durable), nothing performed, and the same batch for the same
//! messages, reads and clock.

use std::sync::Arc;

use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use kflow_core::Delivery;
use kflow_store::{InstanceStatus, Store};

use super::{After, Batch, Driver, Msg};
use crate::engine::{EngineConfig, Shared};

const DOC: &str = concat!(
    "document: {dsl: '1.0.0', namespace: t, name: two, version: '1.0.0'}\n",
    "do:\n",
    "  - a:\n",
    "      call: http\n",
    "      with: {method: get, endpoint: 'http://127.0.0.1:9/a'}\n",
    "  - b:\n",
    "      set:\n",
    "        done: ${ .x }\n",
);

fn driver() -> (Driver, Arc<dyn Store>) {
    let store: Arc<dyn Store> =
        Arc::new(kflow_store::sqlite::SqliteStore::open_in_memory().expect("store"));
    use base64::Engine as _;
    let key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    let vault =
        crate::secrets::Vault::with_source(store.clone(), crate::secrets::KeySource::Env(key))
            .expect("vault");
    let shared = Arc::new(Shared::new(
        store.clone(),
        Arc::new(vault),
        EngineConfig::default(),
    ));
    let (tx, _rx) = mpsc::unbounded_channel();
    let builtin = crate::engine::workers::Builtin::idle(shared.clone(), tx);
    let d = Driver {
        shared,
        builtin,
        active: Default::default(),
        leased: Default::default(),
        subs: Default::default(),
        timers: Default::default(),
        draining: false,
        groups: Default::default(),
        deferred: Default::default(),
        parked: Default::default(),
        recover: Default::default(),
        retry: Default::default(),
        next_recovery: 0,
        publishing: Default::default(),
    };
    (d, store)
}

/// One turn of decisions: the messages, then what they made ready.
fn turn(d: &mut Driver, msgs: Vec<Msg>, now: i64) -> Batch {
    let mut b = Batch::default();
    for m in msgs {
        d.handle(m, &mut b, now);
    }
    d.drain_ready(&mut b, now);
    b
}

fn start(reply: oneshot::Sender<crate::engine::Result<crate::engine::Started>>) -> Msg {
    Msg::Start {
        id: Some("inst-1".into()),
        dedupe: None,
        wf: Arc::new(kflow_dsl::load(DOC.as_bytes()).expect("valid")),
        input: json!({}),
        priority: None,
        audit: None,
        trace: None,
        reply,
    }
}

fn answer() -> Msg {
    Msg::Deliver {
        instance: "inst-1".into(),
        effect: 0,
        delivery: Delivery::Result(Ok(json!({"x": 42}))),
        ack: None,
        leased_ms: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_produce_a_batch_and_perform_nothing() {
    let (mut d, store) = driver();
    let (reply, mut replied) = oneshot::channel();
    let b = turn(&mut d, vec![start(reply)], 1_000);

    // The instance, its first records and the work row of its call, in one commit.
    assert_eq!(b.commits.len(), 1);
    let c = &b.commits[0];
    assert_eq!(c.instance_id, "inst-1");
    assert!(c.create.is_some());
    assert_eq!(c.history.first().map(|h| h.kind.as_str()), Some("started"));
    assert_eq!(c.add_work.len(), 1);
    assert_eq!(c.add_work[0].kind, "http");
    // What to do once it is durable: dispatch the call, answer the caller.
    assert!(
        b.after
            .iter()
            .any(|a| matches!(a, After::Dispatch { effect: 0, .. }))
    );
    assert!(b.after.iter().any(|a| matches!(a, After::ReplyStart(..))));
    // Nothing was performed: not written, not answered, not queued.
    assert!(store.get_instance("inst-1").expect("read").is_none());
    assert!(replied.try_recv().is_err());
    assert!(d.shared.queue.lock().items().is_empty());

    // The loop writes the batch; the call's answer is then decided the same way.
    store.apply(&b.commits).expect("commit");
    let b = turn(&mut d, vec![answer()], 1_005);
    assert_eq!(b.commits.len(), 1);
    let c = &b.commits[0];
    assert!(c.history.iter().any(|h| h.kind == "delivery"));
    assert_eq!(c.remove_work, vec![0]);
    let (status, output, _) = c.status.clone().expect("finished");
    assert_eq!(status, InstanceStatus::Completed);
    assert_eq!(output, Some(json!({"done": 42})));
    assert!(!b.after.iter().any(|a| matches!(a, After::Dispatch { .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_messages_reads_and_clock_give_the_same_batches() {
    let run = || {
        let (mut d, store) = driver();
        let (reply, _replied) = oneshot::channel();
        let first = turn(&mut d, vec![start(reply)], 1_000);
        store.apply(&first.commits).expect("commit");
        let second = turn(&mut d, vec![answer()], 1_005);
        (first.commits, second.commits)
    };
    let (a1, a2) = run();
    let (b1, b2) = run();
    assert_eq!(format!("{a1:?}"), format!("{b1:?}"));
    assert_eq!(format!("{a2:?}"), format!("{b2:?}"));
}
