//! Unit tests of lowering: what a valid document becomes (references, resolved names,
//! defaults); the error messages themselves are covered by `tests/diagnostics`.

use crate::duration::DurationSpec;
use crate::model::*;
use crate::template::Template;

fn load(body: &str) -> Workflow {
    let text = format!(
        "document:\n  dsl: '1.0.3'\n  namespace: test\n  name: t\n  version: '0.1.0'\n{body}"
    );
    match crate::load(text.as_bytes()) {
        Ok(w) => w,
        Err(diags) => panic!(
            "should load:\n{}",
            diags.iter().map(|d| format!("{d}\n")).collect::<String>()
        ),
    }
}

fn errors(body: &str) -> Vec<String> {
    let text = format!(
        "document:\n  dsl: '1.0.3'\n  namespace: test\n  name: t\n  version: '0.1.0'\n{body}"
    );
    match crate::load(text.as_bytes()) {
        Ok(_) => panic!("should fail"),
        Err(diags) => diags.iter().map(ToString::to_string).collect(),
    }
}

fn millis(d: &Option<DurationSpec>) -> Option<u64> {
    match d {
        Some(DurationSpec::Millis(ms)) => Some(*ms),
        _ => None,
    }
}

#[test]
fn references_are_document_pointers() {
    let w = load(
        "do:
  - tryGetPet:
      try:
        - getPet:
            wait: PT1S
      catch:
        do:
          - recover:
              wait: PT1S
  - par:
      fork:
        branches:
          - b/1:
              wait: PT1S
  - loop:
      for:
        in: .items
      do:
        - inner:
            wait: PT1S
  - ev:
      listen:
        to:
          any: []
      foreach:
        do:
          - each:
              wait: PT1S
",
    );
    let refs: Vec<&str> = w.do_.iter().map(|t| t.reference.as_str()).collect();
    assert_eq!(
        refs,
        ["/do/0/tryGetPet", "/do/1/par", "/do/2/loop", "/do/3/ev"]
    );
    let TaskKind::Try(t) = &w.do_[0].task.kind else {
        panic!("try")
    };
    assert_eq!(t.try_[0].reference, "/do/0/tryGetPet/try/0/getPet");
    assert_eq!(
        t.catch.do_.as_ref().map(|d| d[0].reference.as_str()),
        Some("/do/0/tryGetPet/catch/do/0/recover")
    );
    assert_eq!(t.catch.as_, "error");
    let TaskKind::Fork(f) = &w.do_[1].task.kind else {
        panic!("fork")
    };
    assert_eq!(f.branches[0].reference, "/do/1/par/fork/branches/0/b~11");
    assert!(!f.compete);
    let TaskKind::For(f) = &w.do_[2].task.kind else {
        panic!("for")
    };
    assert_eq!(f.do_[0].reference, "/do/2/loop/do/0/inner");
    assert_eq!((f.each.as_str(), f.at.as_str()), ("item", "index"));
    let TaskKind::Listen(l) = &w.do_[3].task.kind else {
        panic!("listen")
    };
    let each = l
        .foreach
        .as_ref()
        .map(|f| (f.item.as_str(), f.at.as_str(), f.do_[0].reference.as_str()));
    assert_eq!(each, Some(("item", "index", "/do/3/ev/foreach/do/0/each")));
}

#[test]
fn then_resolves_to_indexes() {
    let w = load(
        "do:
  - a:
      switch:
        - big:
            when: .n > 10
            then: c
        - default:
            then: exit
  - b:
      wait: PT1S
      then: end
  - c:
      wait: PT1S
      then: a
",
    );
    let TaskKind::Switch(cases) = &w.do_[0].task.kind else {
        panic!("switch")
    };
    assert_eq!(cases[0].then, Flow::Goto(2));
    assert!(cases[0].when.is_some());
    assert_eq!(
        (cases[1].then.clone(), cases[1].when.is_none()),
        (Flow::Exit, true)
    );
    assert_eq!(w.do_[0].task.then, Flow::Continue);
    assert_eq!(w.do_[1].task.then, Flow::End);
    assert_eq!(w.do_[2].task.then, Flow::Goto(0));
}

#[test]
fn use_components_are_resolved() {
    let w = load(
        "use:
  secrets: [creds]
  errors:
    notFound:
      type: https://example.com/not-found
      status: 404
  retries:
    default:
      delay: PT2S
      backoff:
        linear: {}
      limit:
        attempt:
          count: 5
  timeouts:
    short:
      after:
        seconds: 10
  authentications:
    store:
      basic:
        use: creds
  functions:
    getPet:
      call: http
      with:
        method: get
        endpoint:
          uri: https://example.com/pets/{id}
          authentication:
            use: store
timeout: short
do:
  - a:
      try:
        - b:
            call: getPet
            with:
              id: 3
            timeout: short
      catch:
        retry: default
  - c:
      raise:
        error: notFound
",
    );
    assert_eq!(millis(&w.timeout), Some(10_000));
    assert_eq!(w.use_.secrets, ["creds"]);
    assert!(w.use_.errors.contains_key("notFound"));
    let TaskKind::Try(t) = &w.do_[0].task.kind else {
        panic!("try")
    };
    let retry = t
        .catch
        .retry
        .as_ref()
        .map(|r| (r.backoff, r.limit_attempts, millis(&r.delay)));
    assert_eq!(retry, Some((Backoff::Linear, Some(5), Some(2000))));
    let b = &t.try_[0].task;
    assert_eq!(millis(&b.timeout), Some(10_000));
    let TaskKind::Call(Call::Function { name, task, with }) = &b.kind else {
        panic!("function call")
    };
    assert_eq!(name, "getPet");
    assert!(matches!(with, Some(Template::Literal(v)) if v["id"] == 3));
    let TaskKind::Call(Call::Http(http)) = &task.kind else {
        panic!("http")
    };
    assert!(
        matches!(&http.endpoint.uri, UriSpec::Template(u) if u == "https://example.com/pets/{id}")
    );
    let auth = http.endpoint.authentication.as_deref();
    assert!(
        matches!(auth, Some(AuthPolicy::Secret { scheme: AuthScheme::Basic, secret }) if secret == "creds")
    );
    assert!(w.use_.functions.contains_key("getPet"));
    let TaskKind::Raise(r) = &w.do_[1].task.kind else {
        panic!("raise")
    };
    assert!(matches!(&r.error.status, Template::Literal(v) if v == 404));
}

#[test]
fn data_flow_fields() {
    let w = load(
        "evaluate:
  mode: loose
input:
  from: .order
  schema:
    document:
      type: object
output:
  as:
    id: ${ .id }
    fixed: 1
do:
  - a:
      if: ${ .go }
      set: ${ .x }
      export:
        as: $context + .
",
    );
    assert!(w.evaluate_loose);
    let input = w.input.as_ref().map(|i| {
        (
            i.schema.is_some(),
            matches!(i.from, Some(Template::Expr(_))),
        )
    });
    assert_eq!(input, Some((true, true)));
    assert!(matches!(
        w.output.as_ref().and_then(|o| o.as_.as_ref()),
        Some(Template::Object(_))
    ));
    let a = &w.do_[0].task;
    assert!(a.if_.is_some());
    assert!(matches!(&a.kind, TaskKind::Set(Template::Expr(_))));
    assert!(matches!(
        a.export.as_ref().and_then(|e| e.as_.as_ref()),
        Some(Template::Expr(_))
    ));
    assert_eq!(w.definition["do"][0]["a"]["set"], "${ .x }");
}

#[test]
fn run_and_call_defaults() {
    let w = load(
        "do:
  - a:
      run:
        script:
          language: javascript
          code: console.log(1)
  - b:
      run:
        shell:
          command: ls
        await: false
        return: all
  - c:
      call: http
      with:
        method: get
        endpoint: ${ .url }
        output: response
  - d:
      call: grpc
      with:
        proto:
          endpoint: file://app/greet.proto
        service:
          name: Greeter
          host: localhost
        method: SayHello
  - e:
      call: log:1.0.0@default
",
    );
    let TaskKind::Run(a) = &w.do_[0].task.kind else {
        panic!("run")
    };
    assert!(matches!(&a.process, Process::Script { language, .. } if language == "js"));
    assert_eq!((a.await_, a.return_), (true, ReturnMode::Stdout));
    let TaskKind::Run(b) = &w.do_[1].task.kind else {
        panic!("run")
    };
    assert_eq!((b.await_, b.return_), (false, ReturnMode::All));
    let TaskKind::Call(Call::Http(c)) = &w.do_[2].task.kind else {
        panic!("http")
    };
    assert!(matches!(c.endpoint.uri, UriSpec::Expr(_)));
    assert_eq!((c.output, c.redirect), (OutputFormat::Response, false));
    let TaskKind::Call(Call::Grpc(d)) = &w.do_[3].task.kind else {
        panic!("grpc")
    };
    assert_eq!(
        (
            d.service.as_str(),
            d.host.as_str(),
            d.port,
            d.method.as_str()
        ),
        ("Greeter", "localhost", 80, "SayHello")
    );
    assert!(matches!(
        &w.do_[4].task.kind,
        TaskKind::Call(Call::Unsupported { .. })
    ));
}

#[test]
fn grpc_and_worker_mistakes_are_placed() {
    let got = errors(
        "do:
  - a:
      call: worker
      with: {queue: default, function: acme.resize}
  - b:
      call: worker
      with: {queue: 'has space', function: f}
  - c:
      call: worker
      with: {queue: q}
  - d:
      call: grpc
      with:
        proto: {endpoint: 'file:///x.proto'}
        service: {name: s.S, host: 'h/x', port: 70000}
        method: M
",
    );
    let want = [
        "9:21: 'with.queue': 'default' is the server's own worker, which serves no worker functions; name a queue your workers serve",
        "12:21: 'with.queue' must be a name (letters, digits, '.', '-', '_', ':', '/'), got \"has space\"",
        "15:13: missing required property 'function' in call worker 'with'",
        "20:36: 'with.service.host' must be a host name or address, got \"h/x\"",
        "20:49: 'with.service.port' must be a port (1 to 65535), got 70000",
    ];
    assert_eq!(got, want, "{got:#?}");
}

#[test]
fn for_in_inline_array_and_schedule() {
    let w = load(
        "schedule:
  cron: '*/5 * * * * *'
  every: PT1H
do:
  - colors:
      for:
        each: color
        in:
          - name: red
          - name: blue
      do:
        - show:
            wait: PT1S
",
    );
    let TaskKind::For(f) = &w.do_[0].task.kind else {
        panic!("for")
    };
    assert_eq!(f.each, "color");
    assert!(f.in_.source().contains("\"red\""));
    let s = w
        .schedule
        .as_ref()
        .map(|s| (s.cron.clone(), millis(&s.every)));
    assert_eq!(
        s,
        Some((Some("*/5 * * * * *".to_string()), Some(3_600_000)))
    );
}

#[test]
fn every_problem_is_reported_in_position_order() {
    let errs = errors(
        "do:
  - a:
      wait: PT1X
  - b:
      call: http
      with:
        method: get
  - c:
      set:
        x: 1
      then: nowhere
",
    );
    assert_eq!(errs.len(), 3, "{errs:?}");
    assert!(errs[0].starts_with("8:13: 'PT1X' is not an ISO 8601 duration"));
    assert!(errs[1].starts_with("12:9: missing required property 'endpoint'"));
    assert!(errs[2].starts_with("16:13: 'then: nowhere' names no task"));
}

#[test]
fn deep_task_nesting_within_the_depth_limit_lowers() {
    // Each nested `do` costs three YAML levels (list, item, task): 80 levels use 240 of 256.
    let mut text = String::from(
        "document:\n  dsl: '1.0.3'\n  namespace: t\n  name: t\n  version: '0.1.0'\ndo: ",
    );
    for _ in 0..80 {
        text.push_str("[{t: {do: ");
    }
    text.push_str("[{w: {wait: PT1S}}]");
    for _ in 0..80 {
        text.push_str("}}]");
    }
    // Run on a thread with the default 2 MiB stack, like a caller would.
    let handle = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || crate::load(text.as_bytes()).is_ok());
    assert!(matches!(handle.map(|h| h.join()), Ok(Ok(true))));
}

#[test]
fn dsl_versions() {
    for ok in ["1.0.0", "1.0.3", "1.1.0", "1.0.0-alpha5"] {
        let text = format!(
            "document:\n  dsl: '{ok}'\n  namespace: t\n  name: t\n  version: '0.1.0'\ndo: []\n"
        );
        assert!(crate::load(text.as_bytes()).is_ok(), "{ok}");
    }
    for bad in ["0.8.0", "2.0.0", "1.0", "v1.0.0"] {
        let text = format!(
            "document:\n  dsl: '{bad}'\n  namespace: t\n  name: t\n  version: '0.1.0'\ndo: []\n"
        );
        assert!(crate::load(text.as_bytes()).is_err(), "{bad}");
    }
}

#[test]
fn large_documents_lower_in_linear_time() {
    const N: usize = 20_000;
    let mut text = String::from(
        "document:\n  dsl: '1.0.3'\n  namespace: t\n  name: t\n  version: '0.1.0'\ndo:\n",
    );
    for i in 0..N {
        text.push_str(&format!(
            "  - t{i}:\n      wait: PT1S\n      then: t{}\n",
            N - 1 - i
        ));
    }
    let start = std::time::Instant::now();
    let w = crate::load(text.as_bytes()).map_err(|d| d.len());
    assert!(matches!(&w, Ok(w) if w.do_[0].task.then == Flow::Goto(N - 1)));
    // Every `then` wrong: the diagnostics are capped, and listing the names stays cheap.
    let bad = text.replace("then: t", "then: x");
    let diags = crate::load(bad.as_bytes()).err().unwrap_or_default();
    assert_eq!(diags.len(), 201);
    assert!(
        diags[0]
            .message
            .ends_with("(tasks here: t0, t1, t2, t3, t4, t5, t6, t7, t8, t9, t10, t11, ...)"),
        "{}",
        diags[0]
    );
    assert!(
        diags[200]
            .message
            .starts_with("... and 19800 more problems"),
        "{}",
        diags[200]
    );
    assert!(
        start.elapsed() < std::time::Duration::from_secs(10),
        "took {:?}",
        start.elapsed()
    );
}

#[test]
fn dag_extension_lowers_to_indexes_and_triggers() {
    let w = load(
        "do:
  - build:
      dag:
        tasks:
          - merge:
              needs: [b, a]
              trigger: none_failed
              set: { m: 1 }
          - a:
              set: { a: 1 }
          - b:
              needs: a
              set: { b: 1 }
  - loop:
      for:
        in: .items
      parallel: 3
      do:
        - inner:
            set: { i: 1 }
",
    );
    let TaskKind::Dag(d) = &w.do_[0].task.kind else {
        panic!("dag")
    };
    assert_eq!(
        d.tasks.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
        ["merge", "a", "b"]
    );
    assert_eq!(d.nodes[0].needs, [2, 1]);
    assert_eq!(d.nodes[0].trigger, Trigger::NoneFailed);
    assert!(d.nodes[1].needs.is_empty());
    assert_eq!(d.nodes[1].trigger, Trigger::AllSucceeded);
    assert_eq!(d.nodes[2].needs, [1]);
    assert_eq!(d.tasks[2].reference, "/do/0/build/dag/tasks/2/b");
    let TaskKind::For(f) = &w.do_[1].task.kind else {
        panic!("for")
    };
    assert_eq!(f.parallel, Some(Parallelism::Max(3)));
    assert_eq!(w.do_[0].task.kind.keyword(), "dag");
}

#[test]
fn kflow_settings_become_typed_settings() {
    let w = load(
        "  metadata:
    kflow:
      queue: batch
      priority: -2
      schedule:
        timezone: Europe/Paris
        missed: catchup
        catchupMax: 3
        overlap: cancel
      concurrency:
        limit: 2
        key: ${ .customer }
        onLimit: skip
schedule:
  every: PT1M
use:
  functions:
    fetch:
      metadata:
        kflow:
          queue: net
      call: http
      with:
        method: get
        endpoint: http://svc/x
do:
  - loop:
      for:
        in: .items
      do:
        - inner:
            metadata:
              kflow:
                priority: 7
                resources: { cpu: 2, memory: 1Ki, gpu: '1' }
                labels: { zone: eu, ssd: true, rack: 7 }
            call: fetch
  - plain:
      metadata:
        owner: someone
      wait: PT1S
",
    );
    let k = &w.kflow;
    assert_eq!(k.queue.as_deref(), Some("batch"));
    assert_eq!(k.priority, Some(-2));
    assert_eq!(
        k.schedule,
        Some(ScheduleSettings {
            timezone: Some("Europe/Paris".into()),
            missed: Missed::Catchup,
            catchup_max: 3,
            overlap: Overlap::Cancel,
        })
    );
    let c = k.concurrency.as_ref().expect("concurrency");
    assert_eq!((c.limit, c.on_limit), (2, OnLimit::Skip));
    assert_eq!(c.key.as_ref().map(|e| e.source()), Some(".customer"));

    let inner = k.task("/do/0/loop/do/0/inner");
    assert_eq!(inner.priority, Some(7));
    assert_eq!(inner.queue, None);
    let resources: Vec<(&str, f64)> = inner
        .resources
        .iter()
        .map(|(n, a)| (n.as_str(), *a))
        .collect();
    assert_eq!(resources, [("cpu", 2.0), ("gpu", 1.0), ("memory", 1024.0)]);
    let labels: Vec<(&str, &str)> = inner
        .labels
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    assert_eq!(labels, [("rack", "7"), ("ssd", "true"), ("zone", "eu")]);
    assert_eq!(k.task("/use/functions/fetch").queue.as_deref(), Some("net"));
    // tasks without hints are not listed, and answer empty hints
    assert!(k.task("/do/1/plain").is_empty());
    assert_eq!(k.tasks.len(), 2, "{:?}", k.tasks.keys());
    // the same hints on the task itself; the free-form metadata stays as it was
    let TaskKind::For(f) = &w.do_[0].task.kind else {
        panic!()
    };
    assert_eq!(&f.do_[0].task.kflow, inner);
    assert_eq!(w.do_[1].task.metadata["owner"], "someone");
    assert!(w.do_[1].task.kflow.is_empty());
}

#[test]
fn kflow_settings_default_to_none() {
    let w = load("do:\n  - a:\n      wait: PT1S\n");
    assert!(w.kflow.queue.is_none() && w.kflow.priority.is_none());
    assert!(w.kflow.schedule.is_none() && w.kflow.concurrency.is_none());
    assert!(w.kflow.tasks.is_empty());
    // a concurrency key without `${ }` is jq all the same; onLimit defaults to queue
    let w = load(
        "  metadata:\n    kflow:\n      concurrency:\n        limit: 1\n        key: .who\ndo: []\n",
    );
    let c = w.kflow.concurrency.expect("concurrency");
    assert_eq!(c.on_limit, OnLimit::Queue);
    assert_eq!(c.key.map(|e| e.source().to_string()), Some(".who".into()));
    // schedule settings without a schedule are a mistake (see tests/diagnostics)
    let e = errors("  metadata:\n    kflow:\n      schedule: {}\ndo: []\n");
    assert_eq!(e.len(), 1, "{e:?}");
}
