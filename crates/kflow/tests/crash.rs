//! The crash test: `kill -9` the server at random moments while hundreds of instances run,
//! restart it on the same data folder, and check the durability contract.
//!
//! * Every instance the server acknowledged (201) completes with exactly the expected output.
//! * Every HTTP call of every step reached the (local) service at least once; a repeat carries
//!   the same `Idempotency-Key` (a re-run after a crash); a step has exactly one key, except the
//!   flaky step under `try`/`retry`, which has one key per attempt the workflow made.
//! * Shell steps (which log `$KFLOW_IDEMPOTENCY_KEY $KFLOW_ATTEMPT`) ran under one key per
//!   step, with a new attempt number on every re-run. A kill between the engine counting an
//!   attempt and the process starting leaves a gap in the numbers (that attempt never ran): gaps
//!   are reported, repeated numbers fail.
//! * No call or process starts after the result of its effect was committed (checked against
//!   the `delivery` times of the instance histories): only effects in flight at a kill re-run.
//!
//! The kill schedule comes from a seeded xorshift generator; the seed is printed first and can
//! be set with `KFLOW_CRASH_SEED` (hex) to replay a schedule (thread timing still varies).
//! `KFLOW_CRASH_DURABILITY=full` runs the server with `--durability full`.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{
    Recorded, ServerProcess, TempDir, TestServer, get_json, http_request, json_eq, post_json,
};

const DEFAULT_SEED: u64 = 0x6b66_6c6f_775f_6b39;
/// Acknowledged instances to reach.
const INSTANCES: usize = 300;
/// `kill -9`s (each followed by a restart) while instances are being started, at least; more
/// while fewer than [`INSTANCES`] are acknowledged (up to twice as many).
const KILLS: usize = 36;
/// Kills after the last instance was acknowledged, while the last ones run.
const TAIL_KILLS: usize = 4;
/// Gap between a restart and the next kill.
const GAP_MS: (u64, u64) = (50, 700);
/// How much later than the recorded delivery time an effect may still start (the delivery
/// time is taken before the batch is committed).
const COMMIT_SLACK_MS: i64 = 2_000;
/// How long the instances get to finish after the last restart.
const FINISH_TIMEOUT: Duration = Duration::from_secs(120);

/// xorshift64*: small, deterministic, good enough for a schedule.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

// ---------------------------------------------------------------------------------------------
// The workflows

/// The five workflows; instance `i` runs workflow `i % 5`.
const NAMES: [&str; 5] = ["chain", "fanout", "retrying", "shells", "mixed"];

fn kind_of(i: u64) -> usize {
    (i % 5) as usize
}

/// How many times the flaky endpoint answers 503 for instance `i` (1 to 3).
fn fails_of(i: u64) -> u64 {
    i % 3 + 1
}

fn v(i: u64, s: u64) -> u64 {
    i * 100 + s
}

/// The output instance `i` must end with.
fn expected_output(i: u64) -> Value {
    match kind_of(i) {
        0 => json!({"i": i, "a": v(i, 1), "sh": 7 * i, "b": v(i, 3)}),
        1 => {
            json!({"i": i, "sum": v(i, 1) + v(i, 2) + v(i, 3), "parts": [v(i, 1), v(i, 2), v(i, 3)]})
        }
        2 => {
            json!({"i": i, "fail": fails_of(i), "r": v(i, 1), "attempts": fails_of(i) + 1, "b": v(i, 2)})
        }
        3 => json!({"i": i, "x": 3 * i, "y": 5 * i}),
        _ => json!({"i": i, "web": v(i, 1), "box": 11 * i, "c": v(i, 3)}),
    }
}

/// The HTTP steps of instance `i`: (step, distinct idempotency keys expected).
fn expected_http(i: u64) -> Vec<(u64, usize)> {
    match kind_of(i) {
        0 => vec![(1, 1), (3, 1)],
        1 => vec![(1, 1), (2, 1), (3, 1)],
        2 => vec![(1, fails_of(i) as usize + 1), (2, 1)],
        3 => vec![],
        _ => vec![(1, 1), (3, 1)],
    }
}

/// The shell steps of instance `i`.
fn expected_shell(i: u64) -> Vec<u64> {
    match kind_of(i) {
        0 => vec![2],
        3 => vec![1, 2],
        4 => vec![2],
        _ => vec![],
    }
}

fn header(name: &str) -> String {
    format!("document:\n  dsl: '1.0.3'\n  namespace: crash\n  name: {name}\n  version: '1.0.0'\n")
}

/// A `call: http` task `name` on step `s` of `path`, its answer merged into the input by `merge`
/// (a jq object built from `.`, the response).
fn http_task(indent: &str, name: &str, base: &str, s: u64, merge: &str) -> String {
    format!(
        "{indent}- {name}:\n{indent}    call: http\n{indent}    with:\n{indent}      method: get\n\
         {indent}      endpoint: '${{ \"{base}/crash/echo?i=\\(.i)&s={s}\" }}'\n\
         {indent}    output:\n{indent}      as: '${{ $input + {merge} }}'\n"
    )
}

/// A `run: shell` task on step `s`: logs `i s key attempt epoch-ms` first, then runs `then` (e.g. a
/// short sleep, so that kills find processes running) and prints `i * mul`.
fn shell_task(
    indent: &str,
    name: &str,
    log: &str,
    s: u64,
    mul: u64,
    then: &str,
    merge: Option<&str>,
) -> String {
    let mut t = format!(
        "{indent}- {name}:\n{indent}    run:\n{indent}      shell:\n\
         {indent}        command: 'echo \"$1 {s} $KFLOW_IDEMPOTENCY_KEY $KFLOW_ATTEMPT $(date +%s%3N)\" >> {log}; {then} echo $(( $1 * {mul} ))'\n\
         {indent}        arguments:\n{indent}          - ${{ .i }}\n"
    );
    if let Some(m) = merge {
        t.push_str(&format!(
            "{indent}    output:\n{indent}      as: '${{ $input + {m} }}'\n"
        ));
    }
    t
}

fn init(extra: &str) -> String {
    format!("do:\n  - init:\n      set:\n        i: ${{ .i }}\n{extra}")
}

fn workflows(base: &str, log: &str) -> Vec<String> {
    let chain = format!(
        "{}{}{}{}  - pause:\n      wait: PT1S\n{}",
        header("chain"),
        init(""),
        http_task("  ", "a", base, 1, "{ a: .v }"),
        shell_task("  ", "sh", log, 2, 7, "", Some("{ sh: (. | tonumber) }")),
        http_task("  ", "b", base, 3, "{ b: .v }"),
    );
    let branch = |name: &str, s: u64| {
        format!(
            "          - {name}:\n              call: http\n              with:\n                method: get\n\
             \x20               endpoint: '${{ \"{base}/crash/echo?i=\\(.i)&s={s}\" }}'\n"
        )
    };
    let fanout = format!(
        "{}{}  - f:\n      fork:\n        branches:\n{}{}{}      output:\n        as: '${{ $input + {{ f: [ .[] | .v ] }} }}'\n\
         \x20 - done:\n      set:\n        i: ${{ .i }}\n        sum: ${{ .f | add }}\n        parts: ${{ .f }}\n",
        header("fanout"),
        init(""),
        branch("x1", 1),
        branch("x2", 2),
        branch("x3", 3),
    );
    let retrying = format!(
        "{}{}  - t:\n      try:\n        - flaky:\n            call: http\n            with:\n              method: get\n\
         \x20             endpoint: '${{ \"{base}/crash/flaky?i=\\(.i)&s=1&fail=\\(.fail)\" }}'\n\
         \x20     catch:\n        errors:\n          with:\n            status: 503\n        retry:\n          delay: PT0.1S\n\
         \x20         limit:\n            attempt:\n              count: 10\n\
         \x20     output:\n        as: '${{ $input + {{ r: .v, attempts: .attempt }} }}'\n{}",
        header("retrying"),
        init("        fail: ${ .i % 3 + 1 }\n"),
        http_task("  ", "b", base, 2, "{ b: .v }"),
    );
    let shells = format!(
        "{}{}{}  - pause:\n      wait: PT0.5S\n{}",
        header("shells"),
        init(""),
        shell_task("  ", "one", log, 1, 3, "", Some("{ x: (. | tonumber) }")),
        shell_task(
            "  ",
            "two",
            log,
            2,
            5,
            "sleep 0.2;",
            Some("{ y: (. | tonumber) }")
        ),
    );
    let mixed = format!(
        "{}{}  - pause:\n      wait: PT0.2S\n  - f:\n      fork:\n        branches:\n{}{}\
         \x20     output:\n        as: '${{ $input + {{ web: .[0].v, box: (.[1] | tonumber) }} }}'\n{}",
        header("mixed"),
        init(""),
        branch("web", 1),
        shell_task("          ", "box", log, 2, 11, "sleep 0.1;", None),
        http_task("  ", "last", base, 3, "{ c: .v }"),
    );
    vec![chain, fanout, retrying, shells, mixed]
}

// ---------------------------------------------------------------------------------------------
// The service the workflows call

/// `/crash/echo?i&s` answers `{i, s, v}` at once. `/crash/flaky?i&s&fail=N` answers 503 to the
/// first N distinct idempotency keys of (i, s) and 200 `{i, s, v, attempt}` from then on; a
/// repeated key gets the same answer as the first time (the way an idempotent service behaves).
fn service() -> TestServer {
    let flaky: Mutex<HashMap<(u64, u64), Vec<String>>> = Mutex::new(HashMap::new());
    TestServer::start_with(move |req: &Recorded| {
        let num = |k: &str| req.query(k).and_then(|x| x.parse::<u64>().ok());
        match req.path() {
            "/crash/echo" => {
                let (i, s) = (num("i")?, num("s")?);
                Some((200, json!({"i": i, "s": s, "v": v(i, s)})))
            }
            "/crash/flaky" => {
                let (i, s, fail) = (num("i")?, num("s")?, num("fail")?);
                let key = req.header("idempotency-key").unwrap_or("").to_string();
                let mut m = flaky.lock().unwrap_or_else(|p| p.into_inner());
                let keys = m.entry((i, s)).or_default();
                let ordinal = match keys.iter().position(|k| *k == key) {
                    Some(p) => p + 1,
                    None => {
                        keys.push(key);
                        keys.len()
                    }
                } as u64;
                if ordinal <= fail {
                    Some((503, json!({"error": "try again", "attempt": ordinal})))
                } else {
                    Some((
                        200,
                        json!({"i": i, "s": s, "v": v(i, s), "attempt": ordinal}),
                    ))
                }
            }
            _ => None,
        }
    })
}

// ---------------------------------------------------------------------------------------------

fn base_of(port: &AtomicU16) -> String {
    format!("http://127.0.0.1:{}", port.load(Ordering::SeqCst))
}

/// Every instance of namespace `crash` the server has: id → (input i, status, output).
fn list_all(base: &str) -> Result<BTreeMap<String, (u64, String, Value)>, String> {
    let mut out = BTreeMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = "/api/v1/instances?namespace=crash&limit=1000".to_string();
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let (code, page) = get_json(base, &path)?;
        if code != 200 {
            return Err(format!("GET {path}: HTTP {code}: {page}"));
        }
        for it in page["items"].as_array().cloned().unwrap_or_default() {
            let id = it["id"].as_str().unwrap_or("").to_string();
            let i = it["input"]["i"].as_u64().unwrap_or(u64::MAX);
            let status = it["status"].as_str().unwrap_or("").to_string();
            out.insert(
                id,
                (i, status, it.get("output").cloned().unwrap_or(Value::Null)),
            );
        }
        match page["next"].as_str() {
            Some(n) if !n.is_empty() => cursor = Some(n.to_string()),
            _ => return Ok(out),
        }
    }
}

/// The instance, its work and its history, for a failure message.
fn describe_instance(base: &str, id: &str) -> String {
    let inst = get_json(base, &format!("/api/v1/instances/{id}")).map(|(_, v)| v);
    let hist =
        get_json(base, &format!("/api/v1/instances/{id}/history?limit=10000")).map(|(_, v)| v);
    let mut s = format!(
        "instance {id}: {}\n  history:\n",
        inst.map(|v| v.to_string()).unwrap_or_else(|e| e)
    );
    match hist {
        Ok(h) => {
            for item in h["items"].as_array().cloned().unwrap_or_default() {
                s.push_str(&format!("    {item}\n"));
            }
        }
        Err(e) => s.push_str(&format!("    ({e})\n")),
    }
    s
}

/// What is killed: one server on SQLite (killed, then restarted), or three nodes on one
/// PostgreSQL database (the node the test talks to killed; another adopts its instances; the
/// killed one comes back as a new node).
enum Target {
    One(ServerProcess),
    Cluster {
        cluster: support::Cluster,
        active: usize,
        /// Dropped (with the database) after the nodes.
        _db: kflow_store_pg::testing::TestDb,
    },
}

impl Target {
    fn server(&self) -> &ServerProcess {
        match self {
            Target::One(s) => s,
            Target::Cluster {
                cluster, active, ..
            } => &cluster.nodes[*active],
        }
    }

    fn base(&self) -> String {
        self.server().base()
    }

    fn port(&self) -> u16 {
        self.server().port
    }

    fn log_tail(&self, max: usize) -> String {
        match self {
            Target::One(s) => s.log_tail(max),
            Target::Cluster { cluster, .. } => cluster.logs(),
        }
    }

    /// `kill -9`, and the service back (restarted, or taken over).
    fn crash(&mut self) {
        match self {
            Target::One(s) => {
                s.kill9();
                s.restart();
            }
            Target::Cluster {
                cluster, active, ..
            } => {
                let (next, _) = cluster.kill_and_adopt(*active);
                *active = next;
            }
        }
    }
}

#[test]
fn kill_9_at_random_moments_loses_nothing_and_repeats_only_in_flight_effects() {
    crash_test(None);
}

/// The same on three nodes sharing one PostgreSQL database: every kill is of the node the test
/// talks to (it drives what the test started), another node adopts its instances, and the
/// killed node comes back.
#[test]
fn kill_9_of_a_node_of_a_postgres_cluster_loses_nothing() {
    let Some(db) = kflow_store_pg::testing::TestDb::create(
        "kill_9_of_a_node_of_a_postgres_cluster_loses_nothing",
    ) else {
        return;
    };
    crash_test(Some(db));
}

fn crash_test(db: Option<kflow_store_pg::testing::TestDb>) {
    let seed = std::env::var("KFLOW_CRASH_SEED")
        .ok()
        .and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok())
        .unwrap_or(DEFAULT_SEED);
    println!("crash test seed: {seed:#x} (KFLOW_CRASH_SEED={seed:x} replays the kill schedule)");
    let t0 = Instant::now();

    let service = service();
    let dir = TempDir::new("crash");
    let log = dir.path().join("shell.log");
    std::fs::write(&log, "").expect("create the shell log");
    let log_s = log.to_str().expect("utf-8 temp path").to_string();
    let durability = std::env::var("KFLOW_CRASH_DURABILITY").unwrap_or_else(|_| "process".into());
    println!("durability: {durability}");
    // The shell steps append to a log outside their sandbox: the config lets them (and only
    // that file's folder), as a user would declare a path its tasks need.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let config = dir.path().join("kflow.yaml");
    std::fs::write(
        &config,
        format!(
            "sandbox:\n  read_write: [{:?}]\n",
            dir.path().display().to_string()
        ),
    )
    .expect("config");
    let config_s = config.to_str().expect("utf-8 temp path").to_string();
    let mut server = match db {
        None => Target::One(ServerProcess::start(
            &dir.path().join("data"),
            &["--durability", &durability, "--config", &config_s],
        )),
        Some(db) => {
            // A short lease: an adoption in about 1.25 s after each kill.
            std::fs::write(
                &config,
                format!(
                    "sandbox:\n  read_write: [{:?}]\ndb_lease_ms: 1000\n",
                    dir.path().display().to_string()
                ),
            )
            .expect("config");
            let key = support::base64(&[9u8; 32]);
            let env = [("KFLOW_MASTER_KEY", key.as_str())];
            let args = ["--db", db.url.as_str(), "--config", config_s.as_str()];
            let mut cluster = support::Cluster::new(Duration::from_secs(5));
            for n in 0..3 {
                cluster.spawn(&dir.path().join(format!("node{n}")), &args, &env);
            }
            println!("three nodes on PostgreSQL ({})", db.name);
            Target::Cluster {
                cluster,
                active: 0,
                _db: db,
            }
        }
    };
    let port = Arc::new(AtomicU16::new(server.port()));

    for (n, doc) in workflows(&service.base(), &log_s).iter().enumerate() {
        let r = http_request(
            "POST",
            &server.base(),
            "/api/v1/definitions",
            Some(("application/yaml", doc.as_bytes())),
            Duration::from_secs(30),
        )
        .expect("register a workflow");
        assert_eq!(
            r.status,
            201,
            "registering {}: {}\n{doc}",
            NAMES[n],
            r.text()
        );
    }

    // Start instances from another thread, paced so that they spread over the kills.
    let acked: Arc<Mutex<BTreeMap<u64, String>>> = Arc::new(Mutex::new(BTreeMap::new()));
    let failed_starts = Arc::new(Mutex::new(Vec::<(u64, String)>::new()));
    // Starts answered 200: a retry of a start whose first answer was lost (or refused by a
    // dying server) found the instance the first attempt had created.
    let repeats = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let starter = {
        let (acked, failed, port, stop, repeats) = (
            acked.clone(),
            failed_starts.clone(),
            port.clone(),
            stop.clone(),
            repeats.clone(),
        );
        let mut rng = Rng::new(seed ^ 0x9e37_79b9_7f4a_7c15);
        std::thread::spawn(move || {
            let mut i = 0u64;
            while acked.lock().map(|a| a.len()).unwrap_or(0) < INSTANCES
                && !stop.load(Ordering::SeqCst)
            {
                i += 1;
                // Every start carries its own instance id and is retried until answered:
                // exactly one instance per id, whatever the kills did to the answers.
                let body = json!({"namespace": "crash", "name": NAMES[kind_of(i)],
                    "id": format!("crash-{i}"), "input": {"i": i}});
                while !stop.load(Ordering::SeqCst) {
                    match post_json(&base_of(&port), "/api/v1/instances", &body) {
                        Ok((code @ (200 | 201), v)) => {
                            let id = v["id"].as_str().unwrap_or("").to_string();
                            assert_eq!(id, format!("crash-{i}"), "HTTP {code}: {v}");
                            if code == 200 {
                                repeats.fetch_add(1, Ordering::SeqCst);
                            }
                            acked
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .insert(i, id);
                            break;
                        }
                        Ok((code, v)) => failed
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push((i, format!("HTTP {code}: {v}"))),
                        Err(e) => failed
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push((i, e)),
                    }
                    std::thread::sleep(Duration::from_millis(30));
                }
                std::thread::sleep(Duration::from_millis(rng.range(20, 70)));
            }
        })
    };

    // The kills.
    let mut rng = Rng::new(seed);
    let mut acked_at_kill = Vec::new();
    let count = || acked.lock().map(|a| a.len()).unwrap_or(0);
    let mut tail = 0;
    let start_deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let kills = acked_at_kill.len();
        if kills >= KILLS && count() >= INSTANCES {
            if tail == TAIL_KILLS {
                break;
            }
            tail += 1;
        } else if kills >= 2 * KILLS {
            // Enough kills: the server stays up until the starter is done, then the tail kills.
            assert!(
                Instant::now() < start_deadline,
                "only {} instances acknowledged; failed starts: {:?}\n{}",
                count(),
                failed_starts
                    .lock()
                    .map(|f| f.iter().rev().take(5).cloned().collect::<Vec<_>>())
                    .unwrap_or_default(),
                server.log_tail(3000)
            );
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        std::thread::sleep(Duration::from_millis(rng.range(GAP_MS.0, GAP_MS.1)));
        acked_at_kill.push(count());
        server.crash();
        port.store(server.port(), Ordering::SeqCst);
    }
    let kills = acked_at_kill.len();
    let kills_phase = t0.elapsed();
    stop.store(true, Ordering::SeqCst);
    starter.join().expect("the starter thread panicked");
    let acked: BTreeMap<u64, String> = acked.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let failed_starts = failed_starts
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let kills_during_starts = acked_at_kill.iter().filter(|n| **n < INSTANCES).count();
    println!(
        "kills: {kills} in {kills_phase:.1?} ({kills_during_starts} while instances were being started; acknowledged at each kill: {acked_at_kill:?})"
    );
    println!(
        "starts: {} acknowledged, {} attempts failed and were retried (server down or killed), {} retries answered with the instance an earlier attempt created",
        acked.len(),
        failed_starts.len(),
        repeats.load(Ordering::SeqCst)
    );
    assert!(
        acked.len() >= INSTANCES,
        "only {} instances acknowledged",
        acked.len()
    );

    // Wait for every instance the server has (acknowledged or not) to finish.
    let base = server.base();
    let wait_start = Instant::now();
    let mut all;
    loop {
        all = list_all(&base).unwrap_or_else(|e| {
            panic!(
                "listing the instances failed: {e}\n{}",
                server.log_tail(3000)
            )
        });
        let missing: Vec<&String> = acked.values().filter(|id| !all.contains_key(*id)).collect();
        assert!(
            missing.is_empty(),
            "acknowledged instances are LOST (not listed after the restarts): {missing:?}\n{}",
            server.log_tail(3000)
        );
        let unfinished = all
            .values()
            .filter(|(_, s, _)| s == "running" || s == "suspended")
            .count();
        if unfinished == 0 {
            break;
        }
        if wait_start.elapsed() > FINISH_TIMEOUT {
            let mut msg = format!(
                "{unfinished} instances did not finish within {FINISH_TIMEOUT:?} of the last restart:\n"
            );
            for (id, (i, s, _)) in all
                .iter()
                .filter(|(_, (_, s, _))| s == "running" || s == "suspended")
                .take(5)
            {
                msg.push_str(&format!(
                    "--- i={i} ({}) status {s}, acknowledged: {}\n",
                    NAMES[kind_of(*i)],
                    acked.values().any(|a| a == id)
                ));
                msg.push_str(&describe_instance(&base, id));
            }
            panic!("{msg}\n--- server log tail ---\n{}", server.log_tail(3000));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let finish_wait = wait_start.elapsed();

    // The instances to check: every one the server has; the acknowledged ones by their id.
    let by_i: BTreeMap<u64, String> = all.iter().map(|(id, (i, _, _))| (*i, id.clone())).collect();
    assert_eq!(by_i.len(), all.len(), "two instances with the same input i");
    for (i, id) in &acked {
        assert_eq!(
            by_i.get(i),
            Some(id),
            "acknowledged instance i={i} {id} is listed under another id"
        );
    }
    let ghosts: Vec<u64> = by_i
        .keys()
        .filter(|i| !acked.contains_key(i))
        .copied()
        .collect();
    // Exactly once: N ids, N instances (a start that was never answered was retried until it
    // was, so no instance exists that its client does not know).
    assert!(
        ghosts.is_empty()
            || ghosts
                .iter()
                .all(|g| *g > *acked.keys().max().unwrap_or(&0)),
        "instances started but never acknowledged though their starts were retried: {ghosts:?}"
    );

    // (a) Every instance completed with exactly the expected output.
    let mut problems = Vec::new();
    for (i, id) in &by_i {
        let (_, status, output) = &all[id];
        let want = expected_output(*i);
        if status != "completed" || !json_eq(output, &want) {
            problems.push(format!(
                "i={i} ({}) {id}: status {status}, output {output}, expected completed with {want}\n{}",
                NAMES[kind_of(*i)],
                describe_instance(&base, id)
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "{} instances are wrong:\n{}",
        problems.len(),
        problems.iter().take(5).cloned().collect::<String>()
    );

    // (b) HTTP calls: every step reached the service; repeats carry the same key.
    let requests: Vec<Recorded> = service
        .requests()
        .into_iter()
        .filter(|r| r.path().starts_with("/crash/"))
        .collect();
    let mut calls: BTreeMap<(u64, u64), Vec<String>> = BTreeMap::new();
    for r in &requests {
        let (Some(i), Some(s)) = (
            r.query("i").and_then(|x| x.parse().ok()),
            r.query("s").and_then(|x| x.parse().ok()),
        ) else {
            panic!("a request without i and s: {}", r.target);
        };
        let key = r
            .header("idempotency-key")
            .unwrap_or_else(|| panic!("a call without an Idempotency-Key: {}", r.target));
        calls.entry((i, s)).or_default().push(key.to_string());
    }
    let mut key_owner: HashMap<&str, (u64, u64)> = HashMap::new();
    let mut repeated = 0usize;
    let mut max_repeats = 0usize;
    for ((i, s), keys) in &calls {
        let id = by_i.get(i).unwrap_or_else(|| {
            panic!("a call for i={i} s={s}, an instance the server does not have")
        });
        let distinct: BTreeSet<&str> = keys.iter().map(String::as_str).collect();
        repeated += keys.len() - distinct.len();
        for k in &distinct {
            let n = keys.iter().filter(|x| x.as_str() == *k).count();
            max_repeats = max_repeats.max(n - 1);
            if let Some(other) = key_owner.insert(*k, (*i, *s)) {
                panic!(
                    "Idempotency-Key {k} was sent for i={i} s={s} and for i={} s={}",
                    other.0, other.1
                );
            }
        }
        let want = expected_http(*i)
            .into_iter()
            .find(|(step, _)| step == s)
            .map(|(_, n)| n);
        match want {
            None => panic!(
                "unexpected call i={i} s={s} ({}) {id}: keys {keys:?}",
                NAMES[kind_of(*i)]
            ),
            Some(n) => assert_eq!(
                distinct.len(),
                n,
                "i={i} s={s} ({}): {} distinct idempotency keys, expected {n}; calls in order: {keys:?}\n{}",
                NAMES[kind_of(*i)],
                distinct.len(),
                describe_instance(&base, id)
            ),
        }
    }
    for i in by_i.keys() {
        for (s, _) in expected_http(*i) {
            assert!(
                calls.contains_key(&(*i, s)),
                "i={i} s={s} ({}) never called the service",
                NAMES[kind_of(*i)]
            );
        }
    }

    // (d) Shell runs: one key per step, a new attempt number on every re-run.
    let text = std::fs::read_to_string(&log).expect("read the shell log");
    let mut shells: BTreeMap<(u64, u64), Vec<(String, u32)>> = BTreeMap::new();
    let mut shell_times: Vec<(String, i64, String)> = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let parsed = match f.as_slice() {
            [i, s, key, attempt, ms] => match (
                i.parse::<u64>(),
                s.parse::<u64>(),
                attempt.parse::<u32>(),
                ms.parse::<i64>(),
            ) {
                (Ok(i), Ok(s), Ok(a), Ok(ms)) => Some((i, s, key, a, ms)),
                _ => None,
            },
            _ => None,
        };
        let (i, s, key, attempt, ms) =
            parsed.unwrap_or_else(|| panic!("a bad shell log line: {line:?}"));
        shells
            .entry((i, s))
            .or_default()
            .push((key.to_string(), attempt));
        shell_times.push((
            key.to_string(),
            ms,
            format!("shell run i={i} s={s} attempt {attempt}"),
        ));
    }
    let mut shell_reruns = 0usize;
    let mut attempt_gaps = Vec::new();
    for ((i, s), runs) in &shells {
        let id = by_i.get(i).unwrap_or_else(|| {
            panic!("a shell run for i={i}, an instance the server does not have")
        });
        assert!(
            expected_shell(*i).contains(s),
            "unexpected shell run i={i} s={s} ({}): {runs:?}",
            NAMES[kind_of(*i)]
        );
        let keys: BTreeSet<&str> = runs.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys.len(),
            1,
            "i={i} s={s}: a shell step ran under several keys: {runs:?}\n{}",
            describe_instance(&base, id)
        );
        let mut attempts: Vec<u32> = runs.iter().map(|(_, a)| *a).collect();
        attempts.sort_unstable();
        let before = attempts.len();
        attempts.dedup();
        assert_eq!(
            attempts.len(),
            before,
            "i={i} s={s}: a re-run reused an attempt number (KFLOW_ATTEMPT must grow): {runs:?}\n{}",
            describe_instance(&base, id)
        );
        shell_reruns += runs.len() - 1;
        // A kill between the attempt being recorded and the process starting leaves a gap
        // (that attempt never ran); report the gaps, they do not break at-least-once.
        if attempts.first() != Some(&1) || attempts.windows(2).any(|w| w[1] != w[0] + 1) {
            attempt_gaps.push(format!("i={i} s={s}: {runs:?}"));
        }
    }
    for i in by_i.keys() {
        for s in expected_shell(*i) {
            assert!(
                shells.contains_key(&(*i, s)),
                "i={i} s={s} ({}) never ran its shell step",
                NAMES[kind_of(*i)]
            );
        }
    }

    // No effect runs again once its result is committed: every call and every shell run
    // started before the delivery of its effect was recorded in the history (with a margin for
    // the commit itself). The idempotency key is `<instance id>-<effect id>`.
    let mut delivered: HashMap<String, i64> = HashMap::new();
    for id in by_i.values() {
        let (code, h) = get_json(
            &base,
            &format!("/api/v1/instances/{id}/history?limit=10000"),
        )
        .unwrap_or_else(|e| panic!("history of {id}: {e}"));
        assert_eq!(code, 200, "history of {id}: {h}");
        for item in h["items"].as_array().cloned().unwrap_or_default() {
            if item["kind"] == "delivery"
                && let (Some(effect), Some(t)) =
                    (item["data"]["effect"].as_u64(), item["time_ms"].as_i64())
            {
                delivered.insert(format!("{id}-{effect}"), t);
            }
        }
    }
    let mut late = Vec::new();
    let mut max_margin = i64::MIN;
    let runs = requests
        .iter()
        .map(|r| {
            (
                r.header("idempotency-key").unwrap_or("").to_string(),
                r.at_ms,
                format!("call {}", r.target),
            )
        })
        .chain(shell_times.iter().cloned());
    for (key, at, what) in runs {
        let Some(d) = delivered.get(&key) else {
            panic!("{what} (key {key}): the history has no delivery for this effect");
        };
        max_margin = max_margin.max(at - d);
        if at > d + COMMIT_SLACK_MS {
            late.push(format!(
                "{what} (key {key}) at {at}, {} ms after its result was committed",
                at - d
            ));
        }
    }
    assert!(
        late.is_empty(),
        "{} effects ran again after their result was committed:\n{}\n{}",
        late.len(),
        late.iter().take(10).cloned().collect::<Vec<_>>().join("\n"),
        late.first()
            .and_then(|l| l.split("key ").nth(1))
            .and_then(|k| k.split(')').next())
            .and_then(|k| by_i.values().find(|id| k.starts_with(id.as_str())))
            .map(|id| describe_instance(&base, id))
            .unwrap_or_default()
    );

    // (c) The summary.
    let shell_runs: usize = shells.values().map(Vec::len).sum();
    println!("--- crash test summary (seed {seed:#x}) ---");
    println!(
        "instances: {} acknowledged + {} committed without an acknowledgement (start answer lost in a kill); {} start requests failed",
        acked.len(),
        ghosts.len(),
        failed_starts.len()
    );
    println!(
        "kills: {kills} (each followed by a restart); all {} instances completed {finish_wait:.1?} after the last restart",
        by_i.len()
    );
    println!(
        "http calls: {} for {} (instance, step) pairs, {} distinct keys; {repeated} repeated (same key) — at most {max_repeats} repeats of one call",
        requests.len(),
        calls.len(),
        key_owner.len()
    );
    println!(
        "shell runs: {shell_runs} for {} steps; {shell_reruns} re-runs; {} steps with a gap in KFLOW_ATTEMPT{}",
        shells.len(),
        attempt_gaps.len(),
        if attempt_gaps.is_empty() {
            String::new()
        } else {
            format!(": {attempt_gaps:?}")
        }
    );
    let per_kill = (repeated + shell_reruns) as f64 / kills as f64;
    println!(
        "re-runs after a commit: none (the latest start of any run was {max_margin} ms relative to its delivery; {per_kill:.2} repeats per kill)"
    );
    println!("time: {:.1?} in all", t0.elapsed());
}
