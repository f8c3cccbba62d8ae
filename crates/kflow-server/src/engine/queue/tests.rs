//! The queue's rules; its rate limits and namespace fairness in `limit_tests`.

use super::*;

fn item(i: &str, queue: &str, priority: i64, needs: &[(&str, f64)], at: i64) -> Item {
    let mut n: Resources = needs.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    n.entry("tasks".into()).or_insert(1.0);
    Item {
        instance: i.into(),
        namespace: "ns".into(),
        rate_keys: vec![format!("queue:{queue}")],
        effect_id: 0,
        task: "/do/0/x".into(),
        effect: Effect::Timer { at_ms: 0 },
        queue: queue.into(),
        priority,
        needs: n,
        labels: BTreeMap::new(),
        enqueued_ms: at,
        ready_us: 0,
        attempt: Some(1),
        limits: Default::default(),
        traceparent: None,
        workflow: None,
        rank_ms: 0.0,
    }
}

fn worker(id: &str, cap: &str) -> Worker {
    Worker {
        id: id.into(),
        queues: vec!["default".into()],
        labels: BTreeMap::new(),
        capacity: parse_capacity(cap).unwrap(),
        used: Resources::new(),
        leases: HashSet::new(),
        last_seen_ms: 0,
        draining: false,
        builtin: false,
        waiting: false,
        owner: None,
        namespaces: None,
    }
}

#[test]
fn capacity_is_never_oversubscribed() {
    let mut q = Queue::default();
    q.register(worker("w", "cpu=4,tasks=10"));
    for i in 0..5 {
        q.push(item(&format!("i{i}"), "default", 0, &[("cpu", 2.0)], 0));
    }
    assert_eq!(q.take("w", 10, 0, 2000).len(), 2);
    assert_eq!(q.worker("w").unwrap().used["cpu"], 4.0);
    let l = q.leases.keys().next().cloned().unwrap();
    q.complete(&l, "w").unwrap();
    assert_eq!(q.take("w", 10, 0, 2000).len(), 1);
}

#[test]
fn priority_then_age_and_aging_prevents_starvation() {
    let mut q = Queue::default();
    q.register(worker("w", "tasks=1"));
    q.push(item("low-old", "default", 0, &[], 0));
    q.push(item("high", "default", 5, &[], 40_000));
    assert_eq!(q.take("w", 1, 40_000, 2000)[0].item.instance, "high");
    let l = q.leases.keys().next().cloned().unwrap();
    q.complete(&l, "w").unwrap();
    // After 60 s of waiting the old low-priority item outranks a fresh priority-5 one.
    q.push(item("high2", "default", 5, &[], 60_000));
    assert_eq!(q.take("w", 1, 60_000, 2000)[0].item.instance, "low-old");
}

#[test]
fn queues_labels_and_least_loaded() {
    let mut q = Queue::default();
    let mut gpu = worker("gpu", "tasks=4");
    gpu.queues = vec!["gpu".into()];
    gpu.labels.insert("zone".into(), "a".into());
    q.register(gpu);
    q.register(worker("busy", "tasks=4"));
    q.register(worker("idle", "tasks=4"));
    let mut x = item("x", "gpu", 0, &[], 0);
    x.labels.insert("zone".into(), "b".into());
    q.push(x.clone());
    assert!(q.take("gpu", 1, 0, 2000).is_empty(), "label mismatch");
    assert!(why_waiting(&q, &x).contains("labels zone=b"));
    q.push(item("a", "default", 0, &[], 0));
    assert_eq!(q.take("busy", 1, 0, 2000).len(), 1);
    q.push(item("b", "default", 0, &[], 0));
    q.set_waiting("idle", true);
    assert!(
        q.take("busy", 1, 0, 2000).is_empty(),
        "the idle waiting worker should get it"
    );
    assert_eq!(q.take("idle", 1, 0, 2000).len(), 1);
}

#[test]
fn expired_leases_go_back_and_late_results_are_refused() {
    let mut q = Queue::default();
    q.register(worker("w", "tasks=2"));
    q.push(item("a", "default", 0, &[], 0));
    let lease = q.take("w", 1, 0, 2000).remove(0);
    assert!(q.expire(1000, 2000).is_empty());
    assert_eq!(
        q.heartbeat("w", std::slice::from_ref(&lease.id), 1500, 2000),
        Some(vec![])
    );
    let gone = q.expire(4000, 2000);
    assert_eq!(gone.len(), 1);
    assert_eq!(q.items().len(), 1, "back in the queue");
    assert!(q.complete(&lease.id, "w").unwrap_err().contains("not held"));
    assert_eq!(
        q.heartbeat("w", std::slice::from_ref(&lease.id), 4000, 2000),
        Some(vec![lease.id.clone()])
    );
}

#[test]
fn capacity_strings() {
    let c = parse_capacity("cpu=4,memory=8Gi,gpu=1").unwrap();
    assert_eq!(
        (c["cpu"], c["memory"], c["gpu"], c["tasks"]),
        (4.0, 8.0 * 1024f64.powi(3), 1.0, 16.0)
    );
    for bad in ["cpu", "cpu=x", "=4", "memory=-1Gi"] {
        assert!(parse_capacity(bad).is_err(), "{bad}");
    }
}

mod limit_tests {
    use super::*;

    fn it(i: &str, ns: &str, at: i64) -> Item {
        let mut needs = Resources::new();
        needs.insert("tasks".into(), 1.0);
        Item {
            instance: i.into(),
            namespace: ns.into(),
            rate_keys: vec!["queue:default".into(), "host:api.example.com".into()],
            effect_id: 0,
            task: "/do/0/x".into(),
            effect: Effect::Timer { at_ms: 0 },
            queue: "default".into(),
            priority: 0,
            needs,
            labels: BTreeMap::new(),
            enqueued_ms: at,
            ready_us: 0,
            attempt: Some(1),
            limits: Default::default(),
            traceparent: None,
            workflow: None,
            rank_ms: 0.0,
        }
    }

    fn worker(slots: f64) -> Worker {
        let mut capacity = Resources::new();
        capacity.insert("tasks".into(), slots);
        Worker {
            id: "w".into(),
            queues: vec!["default".into()],
            labels: BTreeMap::new(),
            capacity,
            used: Resources::new(),
            leases: HashSet::new(),
            last_seen_ms: 0,
            draining: false,
            builtin: false,
            waiting: false,
            owner: None,
            namespaces: None,
        }
    }

    #[test]
    fn rate_limits_are_token_buckets_per_host() {
        let mut q = Queue::default();
        q.set_limits(
            [("host:api.example.com".to_string(), 2.0)]
                .into_iter()
                .collect(),
        );
        q.register(worker(100.0));
        for i in 0..10 {
            q.push(it(&format!("i{i}"), "ns", 0));
        }
        assert_eq!(
            q.take("w", 100, 0, 2000).len(),
            2,
            "burst of one second at 2/s"
        );
        assert_eq!(q.take("w", 100, 100, 2000).len(), 0);
        assert!(why_waiting(&q, &q.items()[0]).contains("rate limited by 'host:api.example.com'"));
        assert_eq!(
            q.take("w", 100, 600, 2000).len(),
            1,
            "one token back after 0.5 s"
        );
        assert_eq!(
            q.take("w", 100, 10_000, 2000).len(),
            2,
            "never more than the burst"
        );
    }

    #[test]
    fn namespaces_share_workers_fairly() {
        let mut q = Queue::default();
        q.register(worker(4.0));
        // A busy namespace queued first, a quiet one after: equal priority.
        for i in 0..6 {
            q.push(it(&format!("busy{i}"), "busy", 0));
        }
        q.push(it("quiet0", "quiet", 0));
        q.push(it("quiet1", "quiet", 0));
        let taken: Vec<String> = q
            .take("w", 4, 0, 2000)
            .into_iter()
            .map(|l| l.item.namespace)
            .collect();
        assert_eq!(
            taken.iter().filter(|n| *n == "quiet").count(),
            2,
            "{taken:?}"
        );
    }

    fn hints_of(
        doc_meta: &str,
        task_meta: &str,
        instance_priority: i64,
    ) -> (String, i64, Resources, BTreeMap<String, String>) {
        let text = format!(
            "document:\n  dsl: '1.0.3'\n  namespace: t\n  name: q\n  version: '1.0.0'\n{doc_meta}do:\n  - a:\n{task_meta}      call: http\n      with:\n        method: get\n        endpoint: http://svc/x\n"
        );
        let wf = kflow_dsl::load(text.as_bytes()).unwrap_or_else(|d| panic!("{d:?}"));
        task_hints(&wf, "/do/0/a", instance_priority)
    }

    #[test]
    fn task_hints_come_from_the_checked_settings() {
        // nothing set: queue default, priority 0, one tasks slot, no labels
        let (q, p, needs, labels) = hints_of("", "", 0);
        assert_eq!((q.as_str(), p), ("default", 0));
        assert_eq!(needs, Resources::from([("tasks".to_string(), 1.0)]));
        assert!(labels.is_empty());
        // the task's own
        let task = "      metadata:\n        kflow:\n          queue: gpu\n          priority: 5\n          resources: { cpu: 2, memory: 1Ki, tasks: 2 }\n          labels: { zone: eu, ssd: true }\n";
        let doc = "  metadata:\n    kflow:\n      queue: batch\n      priority: -1\n";
        let (q, p, needs, labels) = hints_of(doc, task, 9);
        assert_eq!((q.as_str(), p), ("gpu", 5));
        assert_eq!(
            (needs["cpu"], needs["memory"], needs["tasks"]),
            (2.0, 1024.0, 2.0)
        );
        assert_eq!(labels["zone"], "eu");
        assert_eq!(labels["ssd"], "true");
        // the workflow's defaults, and the instance's priority before the workflow's
        let (q, p, ..) = hints_of(doc, "", 0);
        assert_eq!((q.as_str(), p), ("batch", -1));
        let (_, p, ..) = hints_of(doc, "", 3);
        assert_eq!(p, 3);
        // a task priority of 0 is a priority: it wins over the instance's
        let (_, p, ..) = hints_of(
            doc,
            "      metadata:\n        kflow:\n          priority: 0\n",
            3,
        );
        assert_eq!(p, 0);
    }

    #[test]
    fn raw_hints_match_task_hints_on_valid_settings() {
        let meta = serde_json::json!({"kflow": {"queue": "gpu", "priority": 5, "resources": {"cpu": 2, "memory": "1Ki"}, "labels": {"zone": "eu", "rack": 7}}});
        let (q, p, needs, labels) = hints(Some(&meta));
        assert_eq!((q.as_str(), p), ("gpu", 5));
        assert_eq!(
            (needs["cpu"], needs["memory"], needs["tasks"]),
            (2.0, 1024.0, 1.0)
        );
        assert_eq!(
            (labels["zone"].as_str(), labels["rack"].as_str()),
            ("eu", "7")
        );
    }
}

#[test]
fn critical_path_first_orders_equal_priorities_by_rank_and_aging_still_wins() {
    let mut q = Queue::default();
    q.register(worker("w", "tasks=1"));
    let mut short = item("short", "default", 0, &[], 0);
    short.rank_ms = 10.0;
    let mut long = item("long", "default", 0, &[], 5);
    long.rank_ms = 900.0;
    q.push(short.clone());
    q.push(long.clone());
    // First come, first served by default.
    assert_eq!(q.take("w", 1, 10, 60_000)[0].item.instance, "short");
    let mut q = Queue::default();
    q.register(worker("w", "tasks=1"));
    q.set_critical_path(["default".to_string()].into_iter().collect());
    q.push(short.clone());
    q.push(long.clone());
    assert_eq!(
        q.take("w", 1, 10, 60_000)[0].item.instance,
        "long",
        "longest path first"
    );
    // An item that waited an aging period longer outranks any path.
    let mut q = Queue::default();
    q.register(worker("w", "tasks=1"));
    q.set_critical_path(["*".to_string()].into_iter().collect());
    q.push(short);
    q.push(item("later", "default", 0, &[], AGING_MS));
    let mut l = long;
    l.enqueued_ms = AGING_MS;
    q.push(l);
    assert_eq!(
        q.take("w", 1, AGING_MS + 1, 60_000)[0].item.instance,
        "short"
    );
}
