//! `kflow analyze`'s recommendations on crafted statistics, one case per recommendation: the
//! exact text each gives, with its evidence and the document line it names.

use kflow_server::adaptive::learn::{TaskStats, merge_json};
use kflow_server::engine::{Engine, EngineConfig};
use kflow_store::TaskStatsRow;

const DOC: &str = "document: {dsl: '1.0.0', namespace: adv, name: flow, version: '1.0.0'}
do:
  - guarded:
      try:
        - flaky:
            call: http
            with: {method: get, endpoint: 'http://127.0.0.1:9/flaky'}
      catch:
        retry:
          delay: {milliseconds: 10}
          limit: {attempt: {count: 3}}
  - loose:
      call: http
      with: {method: get, endpoint: 'http://127.0.0.1:9/loose'}
      timeout: {after: {minutes: 10}}
  - tight:
      call: http
      with: {method: get, endpoint: 'http://127.0.0.1:9/tight/{id}'}
      timeout: {after: {seconds: 1}}
  - busy:
      call: http
      with: {method: get, endpoint: 'http://127.0.0.1:9/busy/{id}'}
";

/// Statistics of `runs` runs of `run_ms` each, after `wait_ms` in the queue.
fn stats(runs: u64, run_ms: f64, wait_ms: f64, retries: u64, retry_ok: u64) -> TaskStats {
    let mut s = TaskStats::default();
    for _ in 0..runs {
        s.run.add(run_ms / 1e3);
        s.wait.add(wait_ms / 1e3);
    }
    s.ok = runs;
    s.retries = retries;
    s.retry_ok = retry_ok;
    s
}

/// An engine on a fresh directory with `doc` registered.
async fn engine_with(doc: &str) -> (Engine, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("kflow-analysis-{}", uuid::Uuid::now_v7()));
    let engine = Engine::open(EngineConfig {
        data_dir: dir.clone(),
        ..EngineConfig::default()
    })
    .await
    .expect("engine");
    engine.register(doc.as_bytes()).await.expect("register");
    (engine, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_recommendation_names_its_evidence_and_line() {
    let (engine, dir) = engine_with(DOC).await;
    engine
        .register(
            DOC.replace("version: '1.0.0'", "version: '2.0.0'")
                .as_bytes(),
        )
        .await
        .expect("register 2.0.0");
    let row = |task: &str, s: TaskStats| TaskStatsRow {
        namespace: "adv".into(),
        name: "flow".into(),
        version: "1.0.0".into(),
        task: task.into(),
        data: serde_json::to_value(s).unwrap(),
        updated_ms: 1,
    };
    engine
        .store()
        .merge_task_stats(
            &[
                row("/do/0/guarded/try/0/flaky", stats(30, 20.0, 1.0, 12, 0)),
                row("/do/1/loose", stats(30, 50.0, 1.0, 0, 0)),
                row("/do/2/tight", stats(30, 900.0, 1.0, 0, 0)),
                row("/do/3/busy", stats(30, 40.0, 400.0, 0, 0)),
                // Too few runs to judge, whatever they show.
                row("/do/9/few", stats(5, 40.0, 400.0, 0, 0)),
                // Version 2.0.0 made `busy` slower.
                TaskStatsRow {
                    version: "2.0.0".into(),
                    ..row("/do/3/busy", stats(25, 120.0, 1.0, 0, 0))
                },
            ],
            &merge_json,
        )
        .expect("stats");
    let a = engine
        .analysis("adv", "flow", None)
        .await
        .expect("analysis");
    assert_eq!(a.versions[0].version, "2.0.0", "newest first");
    let drift = &a.versions[0].recommendations;
    assert_eq!(drift.len(), 1, "{drift:?}");
    assert_eq!(drift[0].kind, "drift");
    assert_eq!(
        drift[0].message,
        "/do/3/busy got slower with version 2.0.0: its p95 run time rose by 194%"
    );
    assert_eq!(
        drift[0].evidence,
        "p95 118.8 ms in 2.0.0 (25 runs), 40.4 ms in 1.0.0 (30 runs)"
    );
    let got: Vec<(String, String, Option<u32>, String, String)> = a.versions[1]
        .recommendations
        .iter()
        .map(|r| {
            (
                r.kind.clone(),
                r.task.clone(),
                r.line,
                r.message.clone(),
                r.evidence.clone(),
            )
        })
        .collect();
    let expect: Vec<(&str, &str, Option<u32>, &str, &str)> = vec![
        (
            "useless-retries",
            "/do/0/guarded/try/0/flaky",
            Some(3),
            "retries of /do/0/guarded/try/0/flaky almost never succeed: reconsider the retry policy (or what the task calls)",
            "0 of 12 retries succeeded",
        ),
        (
            "loose-timeout",
            "/do/1/loose",
            Some(12),
            "the timeout of /do/1/loose is far above its run times: a stuck run holds its slot that long",
            "timeout 600000 ms, p99 run time 50.3 ms (30 runs)",
        ),
        (
            "tight-timeout",
            "/do/2/tight",
            Some(16),
            "the timeout of /do/2/tight is close to its usual run times: slow runs will time out",
            "timeout 1000 ms, p95 run time 895.8 ms (30 runs)",
        ),
        (
            "queue-bound",
            "/do/3/busy",
            Some(20),
            "/do/3/busy waits for a worker longer than it runs: add capacity to queue default",
            "median wait 402.5 ms, median run 40.4 ms (30 runs)",
        ),
    ];
    let got_ref: Vec<(&str, &str, Option<u32>, &str, &str)> = got
        .iter()
        .map(|(a, b, c, d, e)| (a.as_str(), b.as_str(), *c, d.as_str(), e.as_str()))
        .collect();
    assert_eq!(got_ref, expect);
    // Retried in 12 of 30 runs: the one hot spot.
    assert_eq!(a.versions[1].hot_spots, vec!["/do/0/guarded/try/0/flaky"]);
    // One after the other: the critical path is every task.
    assert_eq!(a.versions[1].critical_path.len(), 4, "{:?}", a.versions[1]);
    let few = a.versions[1]
        .tasks
        .iter()
        .find(|t| t.task == "/do/9/few")
        .expect("few");
    assert!(!few.confident);
    engine.shutdown(std::time::Duration::from_secs(1)).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Two calls one after the other where the second reads nothing the first produces: running
/// them side by side is suggested. A call reading its input, `$context` the one before exports,
/// or an `if:` on its input is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_with_no_data_dependency_could_run_in_parallel() {
    const PAR: &str = "document: {dsl: '1.0.0', namespace: adv, name: par, version: '1.0.0'}
do:
  - user:
      call: http
      with: {method: get, endpoint: 'http://127.0.0.1:9/user/{id}'}
  - orders:
      call: http
      with:
        method: get
        endpoint: '${ \"http://127.0.0.1:9/orders/\" + ($workflow.input.id | tostring) }'
  - price:
      call: http
      with: {method: post, endpoint: 'http://127.0.0.1:9/price', body: '${ .items }'}
      export: {as: '${ {priced: true} }'}
  - audit:
      call: http
      with: {method: post, endpoint: 'http://127.0.0.1:9/audit', body: '${ $context }'}
  - ping:
      if: .ok
      call: http
      with: {method: get, endpoint: 'http://127.0.0.1:9/ping'}
";
    let (engine, dir) = engine_with(PAR).await;
    let rows: Vec<TaskStatsRow> = [
        ("/do/0/user", 80.0),
        ("/do/1/orders", 120.0),
        ("/do/2/price", 60.0),
        ("/do/3/audit", 30.0),
        ("/do/4/ping", 30.0),
    ]
    .into_iter()
    .map(|(task, ms)| TaskStatsRow {
        namespace: "adv".into(),
        name: "par".into(),
        version: "1.0.0".into(),
        task: task.into(),
        data: serde_json::to_value(stats(30, ms, 1.0, 0, 0)).unwrap(),
        updated_ms: 1,
    })
    .collect();
    engine
        .store()
        .merge_task_stats(&rows, &merge_json)
        .expect("stats");
    let a = engine.analysis("adv", "par", None).await.expect("analysis");
    let recs = &a.versions[0].recommendations;
    assert_eq!(recs.len(), 1, "{recs:#?}");
    let r = &recs[0];
    assert_eq!(
        (r.kind.as_str(), r.task.as_str(), r.line),
        ("could-run-in-parallel", "/do/1/orders", Some(3))
    );
    assert_eq!(
        r.message,
        "/do/0/user (line 3) and /do/1/orders (line 6) have no data dependency: /do/1/orders \
         reads nothing /do/0/user produces, so both could run side by side in a fork (what \
         follows then gets both outputs; keep the order if /do/1/orders relies on what \
         /do/0/user does outside the workflow)"
    );
    assert_eq!(
        r.evidence,
        "/do/1/orders reads nothing of its input; median run 79.7 ms and 118.8 ms: about 79.7 ms \
         less per run (30 and 30 runs)"
    );
    engine.shutdown(std::time::Duration::from_secs(1)).await;
    let _ = std::fs::remove_dir_all(&dir);
}
