//! Prometheus metrics: one registry per engine, rendered in the text format at `GET /metrics`.
//!
//! Names follow Prometheus conventions (a unit suffix, `_total` for counters). Labels are
//! bounded: namespaces and workflow names (which a token's holder registers, and which the
//! rate limit and the definition store bound), effect kinds, queue names, route templates
//! (never a path with an id), status classes — never an instance id.

use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkflowLabels {
    pub namespace: String,
    pub workflow: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FinishedLabels {
    pub namespace: String,
    pub workflow: String,
    /// completed, faulted or cancelled.
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// http, openapi, process (static: no allocation per observation).
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    pub queue: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    /// A service of the config (`services:`): bounded by the config.
    pub service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceOutcomeLabels {
    pub service: String,
    /// ok, failed, failover, refused_open, refused_budget, refused_bulkhead.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BrokerLabels {
    /// A broker of the config (`brokers:`): bounded by the config.
    pub broker: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BrokerOutcomeLabels {
    pub broker: String,
    /// Taken: delivered, duplicate, refused. Published: published, unreachable, refused.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: String,
    /// The route's template (`/api/v1/instances/{id}`), never the path itself.
    pub route: String,
    /// 2xx, 3xx, 4xx, 5xx.
    pub status: String,
}

fn seconds_buckets() -> impl Iterator<Item = f64> {
    // 100 µs to about 55 min.
    exponential_buckets(0.0001, 2.0, 25)
}

/// Every metric kflow keeps.
pub struct Metrics {
    registry: Registry,
    pub instances_started: Family<WorkflowLabels, Counter>,
    pub instances_finished: Family<FinishedLabels, Counter>,
    pub task_duration: Family<KindLabels, Histogram>,
    pub queue_wait: Family<QueueLabels, Histogram>,
    pub queue_depth: Family<QueueLabels, Gauge>,
    /// 0 closed, 1 open, 2 half open.
    pub service_circuit: Family<ServiceLabels, Gauge>,
    pub service_healthy_endpoints: Family<ServiceLabels, Gauge>,
    pub service_in_flight: Family<ServiceLabels, Gauge>,
    pub service_calls: Family<ServiceOutcomeLabels, Counter>,
    pub broker_connected: Family<BrokerLabels, Gauge>,
    pub broker_messages: Family<BrokerOutcomeLabels, Counter>,
    pub broker_published: Family<BrokerOutcomeLabels, Counter>,
    pub queue_oldest_wait: Family<QueueLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub tasks_running: Gauge,
    pub workers: Gauge,
    pub lease_expiries: Counter,
    /// Several nodes on PostgreSQL (zero on one node).
    pub cluster_nodes: Gauge,
    pub cluster_leader: Gauge,
    pub cluster_adopted: Counter,
    pub cluster_forwarded: Counter,
    pub cluster_renewal_failures: Counter,
    pub cluster_events_offered: Counter,
    pub alerts_fired: Counter,
    pub schedule_fires: Family<WorkflowLabels, Counter>,
    pub schedule_skips: Family<WorkflowLabels, Counter>,
    pub schedule_missed: Family<WorkflowLabels, Counter>,
    pub commit_duration: Histogram,
    pub commit_batch: Histogram,
    pub http_duration: Family<RouteLabels, Histogram>,
    /// Serializes renders (gauges are set from the engine's views just before).
    render: Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("kflow");
        let m = Metrics {
            instances_started: Family::default(),
            instances_finished: Family::default(),
            task_duration: Family::new_with_constructor(|| Histogram::new(seconds_buckets())),
            queue_wait: Family::new_with_constructor(|| Histogram::new(seconds_buckets())),
            queue_depth: Family::default(),
            service_circuit: Family::default(),
            service_healthy_endpoints: Family::default(),
            service_in_flight: Family::default(),
            service_calls: Family::default(),
            broker_connected: Family::default(),
            broker_messages: Family::default(),
            broker_published: Family::default(),
            queue_oldest_wait: Family::default(),
            tasks_running: Gauge::default(),
            workers: Gauge::default(),
            lease_expiries: Counter::default(),
            cluster_nodes: Gauge::default(),
            cluster_leader: Gauge::default(),
            cluster_adopted: Counter::default(),
            cluster_forwarded: Counter::default(),
            cluster_renewal_failures: Counter::default(),
            cluster_events_offered: Counter::default(),
            alerts_fired: Counter::default(),
            schedule_fires: Family::default(),
            schedule_skips: Family::default(),
            schedule_missed: Family::default(),
            commit_duration: Histogram::new(seconds_buckets()),
            commit_batch: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            http_duration: Family::new_with_constructor(|| Histogram::new(seconds_buckets())),
            render: Mutex::new(()),
            registry: Registry::default(),
        };
        registry.register(
            "instances_started",
            "Instances started (committed)",
            m.instances_started.clone(),
        );
        registry.register(
            "instances_finished",
            "Instances that ended, by status",
            m.instances_finished.clone(),
        );
        registry.register(
            "task_duration_seconds",
            "Run time of calls and processes on the built-in worker, by effect kind",
            m.task_duration.clone(),
        );
        registry.register(
            "queue_wait_seconds",
            "Time from ready to taken by a worker, by queue",
            m.queue_wait.clone(),
        );
        registry.register(
            "queue_depth",
            "Tasks waiting in a queue (not leased)",
            m.queue_depth.clone(),
        );
        registry.register(
            "service_circuit_state",
            "A named service's circuit: 0 closed, 1 open (calls fail fast), 2 half open",
            m.service_circuit.clone(),
        );
        registry.register(
            "service_healthy_endpoints",
            "A named service's endpoints in rotation",
            m.service_healthy_endpoints.clone(),
        );
        registry.register(
            "service_in_flight",
            "Calls in flight to a named service",
            m.service_in_flight.clone(),
        );
        registry.register(
            "service_calls",
            "Calls to a named service by outcome (failover: a failed connection that went on to another endpoint; refused_*: failed fast)",
            m.service_calls.clone(),
        );
        registry.register(
            "broker_connected",
            "Whether a broker's consumer is connected (1) or trying again (0)",
            m.broker_connected.clone(),
        );
        registry.register(
            "broker_messages",
            "Messages taken from a broker: delivered (recorded and offered), duplicate (recorded before: acknowledged only), refused (not a CloudEvent)",
            m.broker_messages.clone(),
        );
        registry.register(
            "broker_published",
            "Emitted events published to a broker: published (confirmed), unreachable (tried again), refused (the task failed)",
            m.broker_published.clone(),
        );
        registry.register(
            "queue_oldest_wait_seconds",
            "How long the oldest waiting task of a queue has waited",
            m.queue_oldest_wait.clone(),
        );
        registry.register(
            "tasks_running",
            "Tasks leased to a worker now",
            m.tasks_running.clone(),
        );
        registry.register("workers", "Workers registered now", m.workers.clone());
        registry.register(
            "lease_expiries",
            "Leases of silent workers expired (their tasks queued again)",
            m.lease_expiries.clone(),
        );
        registry.register(
            "cluster_nodes",
            "Nodes with a live lease on the shared database (0: one node on SQLite)",
            m.cluster_nodes.clone(),
        );
        registry.register(
            "cluster_leader",
            "1 when this node is the leader (retention, alert deliveries)",
            m.cluster_leader.clone(),
        );
        registry.register(
            "cluster_adopted_instances",
            "Instances this node took over from nodes whose lease lapsed or that left",
            m.cluster_adopted.clone(),
        );
        registry.register(
            "cluster_forwarded_requests",
            "Requests this node forwarded to the node that drives their instance",
            m.cluster_forwarded.clone(),
        );
        registry.register(
            "cluster_lease_renewal_failures",
            "Renewals of this node's lease that failed (the database did not answer)",
            m.cluster_renewal_failures.clone(),
        );
        registry.register(
            "cluster_events_offered",
            "Posted events this node offered to its instances (every node offers every event)",
            m.cluster_events_offered.clone(),
        );
        registry.register(
            "schedule_fires",
            "Instances started by schedules, by workflow",
            m.schedule_fires.clone(),
        );
        registry.register(
            "schedule_skips",
            "Schedule fires skipped (the overlap policy, or a full queue of fires), by workflow",
            m.schedule_skips.clone(),
        );
        registry.register(
            "schedule_missed",
            "Schedule ticks missed while the server was down and not caught up, by workflow",
            m.schedule_missed.clone(),
        );
        registry.register(
            "alerts_fired",
            "Alerts fired by the alert rules (each once per rule and subject)",
            m.alerts_fired.clone(),
        );
        registry.register(
            "store_commit_seconds",
            "Time to write one batch of commits",
            m.commit_duration.clone(),
        );
        registry.register(
            "store_commit_batch_size",
            "Instance commits written together in one transaction",
            m.commit_batch.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "API requests by route template, method and status class",
            m.http_duration.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The text exposition format, after `refresh` has set the gauges.
    pub fn render(&self, refresh: impl FnOnce(&Metrics)) -> String {
        let _one = self.render.lock().unwrap_or_else(|p| p.into_inner());
        refresh(self);
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    pub fn started(&self, namespace: &str, workflow: &str) {
        self.instances_started
            .get_or_create(&WorkflowLabels {
                namespace: namespace.into(),
                workflow: workflow.into(),
            })
            .inc();
    }

    pub fn finished(&self, namespace: &str, workflow: &str, status: &str) {
        self.instances_finished
            .get_or_create(&FinishedLabels {
                namespace: namespace.into(),
                workflow: workflow.into(),
                status: status.into(),
            })
            .inc();
    }
}
