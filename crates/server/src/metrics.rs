//! Prometheus metrics of the server and the store's writer, served at `/metrics`.
//!
//! Every request is counted by method, route and status; every error answer by its code;
//! every metering decision by operation, outcome and deny reason; every writer transaction by
//! its size (the store reports it through [`StoreObserver`]). The writer's queue depth is read
//! from the store at scrape time. Stored plan documents that do not load on this node are
//! counted (once per version) and gauged.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tollgate_api::ErrorCode;
use tollgate_core::decision::DenyReason;
use tollgate_store::{EngineStats, StoreObserver};

/// Request duration buckets: 0.25 ms doubling 16 times (to about 8 s).
const DURATION_BUCKET_START_SECONDS: f64 = 0.000_25;
const DURATION_BUCKETS: u16 = 16;
/// Writer batch size buckets: 1 doubling to 512 (`WRITER_BATCH_MAX`).
const BATCH_BUCKETS: u16 = 10;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: Arc<str>,
    route: Arc<str>,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: Arc<str>,
    route: Arc<str>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    code: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EnginePathLabels {
    path: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BillerEventLabels {
    biller: &'static str,
    status: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MeterAttemptLabels {
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    operation: &'static str,
    outcome: &'static str,
    reason: &'static str,
}

/// A metering operation that decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Reserve,
    Check,
    Track,
}

impl Operation {
    fn as_str(self) -> &'static str {
        match self {
            Operation::Reserve => "reserve",
            Operation::Check => "check",
            Operation::Track => "track",
        }
    }
}

fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(
        DURATION_BUCKET_START_SECONDS,
        2.0,
        DURATION_BUCKETS,
    ))
}

pub struct Metrics {
    registry: Registry,
    /// One copy of each method and route label value, shared by every request's labels so
    /// counting a request allocates nothing. Holds what `requests` and `durations` hold.
    label_values: RwLock<HashSet<Arc<str>>>,
    requests: Family<RequestLabels, Counter>,
    durations: Family<RouteLabels, Histogram, fn() -> Histogram>,
    decisions: Family<DecisionLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    writer_batch_size: Histogram,
    writer_queue_depth: Gauge,
    engine_lag: Gauge,
    engine_commands: Family<EnginePathLabels, Gauge>,
    plan_load_failures: Counter,
    plan_documents_not_loaded: Gauge,
    biller_events: Family<BillerEventLabels, Counter>,
    meter_attempts: Family<MeterAttemptLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "tollgate_http_requests",
            "HTTP requests answered, by method, route and status",
            requests.clone(),
        );
        let durations = Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            duration_histogram,
        );
        registry.register(
            "tollgate_http_request_duration_seconds",
            "Time to answer an HTTP request, in seconds",
            durations.clone(),
        );
        let decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "tollgate_decisions",
            "Metering decisions, by operation, outcome and deny reason",
            decisions.clone(),
        );
        let errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "tollgate_errors",
            "Error answers, by error code",
            errors.clone(),
        );
        let writer_batch_size = Histogram::new(exponential_buckets(1.0, 2.0, BATCH_BUCKETS));
        registry.register(
            "tollgate_writer_batch_size",
            "Commands per durable writer transaction",
            writer_batch_size.clone(),
        );
        let writer_queue_depth = Gauge::default();
        registry.register(
            "tollgate_writer_queue_depth",
            "Commands waiting for the writer",
            writer_queue_depth.clone(),
        );
        let engine_lag = Gauge::default();
        registry.register(
            "tollgate_engine_projection_lag_records",
            "Command log records the tables do not hold yet (serve --engine)",
            engine_lag.clone(),
        );
        let engine_commands = Family::<EnginePathLabels, Gauge>::default();
        registry.register(
            "tollgate_engine_commands",
            "Metering commands since the start, by where they ran: memory (the engine) or tables",
            engine_commands.clone(),
        );
        let plan_load_failures = Counter::default();
        registry.register(
            "tollgate_plan_load_failures",
            "Stored plan document versions this node could not load (each counted once)",
            plan_load_failures.clone(),
        );
        let plan_documents_not_loaded = Gauge::default();
        registry.register(
            "tollgate_plan_documents_not_loaded",
            "Environments whose newest stored plan document does not load on this node, which \
             serves an older version instead",
            plan_documents_not_loaded.clone(),
        );
        let biller_events = Family::<BillerEventLabels, Counter>::default();
        registry.register(
            "tollgate_biller_events",
            "Verified biller webhook deliveries, by biller and what they did (applied, \
             ignored, stale, unresolved, failed, duplicate)",
            biller_events.clone(),
        );
        let meter_attempts = Family::<MeterAttemptLabels, Counter>::default();
        registry.register(
            "tollgate_meter_event_attempts",
            "Attempts to send usage to a Stripe meter, by outcome (delivered, retry, failed)",
            meter_attempts.clone(),
        );
        Self {
            label_values: RwLock::default(),
            biller_events,
            meter_attempts,
            registry,
            requests,
            durations,
            decisions,
            errors,
            writer_batch_size,
            writer_queue_depth,
            engine_lag,
            engine_commands,
            plan_load_failures,
            plan_documents_not_loaded,
        }
    }

    pub fn observe_request(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        let method = self.label_value(method);
        let route = self.label_value(route);
        self.durations
            .get_or_create(&RouteLabels {
                method: method.clone(),
                route: route.clone(),
            })
            .observe(elapsed.as_secs_f64());
        self.requests
            .get_or_create(&RequestLabels {
                method,
                route,
                status,
            })
            .inc();
    }

    /// The shared copy of a label value.
    fn label_value(&self, value: &str) -> Arc<str> {
        // A poisoned lock only means a panic elsewhere; the set itself is always whole.
        if let Some(shared) = self
            .label_values
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(value)
        {
            return shared.clone();
        }
        let mut values = self.label_values.write().unwrap_or_else(|e| e.into_inner());
        if let Some(shared) = values.get(value) {
            return shared.clone();
        }
        let shared: Arc<str> = Arc::from(value);
        values.insert(shared.clone());
        shared
    }

    /// Counts one decision under its first (most important) deny reason, or `none`.
    pub fn observe_decision(&self, operation: Operation, allowed: bool, reasons: &[DenyReason]) {
        let reason = reasons.first().map_or("none", |r| r.as_str());
        self.decisions
            .get_or_create(&DecisionLabels {
                operation: operation.as_str(),
                outcome: if allowed { "allowed" } else { "denied" },
                reason,
            })
            .inc();
    }

    /// One verified biller delivery and what it did (`duplicate` for one received before).
    pub fn observe_biller_event(&self, biller: &'static str, status: &'static str) {
        self.biller_events
            .get_or_create(&BillerEventLabels { biller, status })
            .inc();
    }

    /// One attempt to send a meter event: `delivered`, `retry` or `failed`.
    pub fn observe_meter_attempt(&self, outcome: &'static str) {
        self.meter_attempts
            .get_or_create(&MeterAttemptLabels { outcome })
            .inc();
    }

    /// A stored plan document version did not load (called once per version).
    pub fn plan_load_failed(&self) {
        self.plan_load_failures.inc();
    }

    /// How many environments now serve an older plan document than their newest stored one.
    pub fn set_plan_documents_not_loaded(&self, environments: usize) {
        self.plan_documents_not_loaded
            .set(i64::try_from(environments).unwrap_or(i64::MAX));
    }

    /// Counts one error answer under its code.
    pub fn observe_error(&self, code: ErrorCode) {
        self.errors
            .get_or_create(&ErrorLabels {
                code: code.as_str(),
            })
            .inc();
    }

    /// The OpenMetrics text of every metric, with the queue depth as of now.
    pub fn encode(&self, writer_queue_depth: usize, engine: Option<EngineStats>) -> String {
        self.writer_queue_depth
            .set(i64::try_from(writer_queue_depth).unwrap_or(i64::MAX));
        if let Some(e) = engine {
            let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
            self.engine_lag.set(gauge(e.projection_lag));
            for (path, n) in [("memory", e.carried), ("tables", e.on_tables)] {
                self.engine_commands
                    .get_or_create(&EnginePathLabels { path })
                    .set(gauge(n));
            }
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl StoreObserver for Metrics {
    fn batch_committed(&self, commands: usize) {
        self.writer_batch_size.observe(commands as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_exported() {
        let m = Metrics::new();
        m.observe_request("POST", "/v1/reserve", 200, Duration::from_millis(2));
        m.observe_decision(Operation::Reserve, false, &[DenyReason::LimitReached]);
        m.batch_committed(3);
        m.plan_load_failed();
        m.set_plan_documents_not_loaded(2);
        m.observe_error(ErrorCode::OutcomeUnknown);
        let text = m.encode(
            7,
            Some(EngineStats {
                projection_lag: 5,
                carried: 9,
                on_tables: 1,
            }),
        );
        assert!(text.contains(
            r#"tollgate_http_requests_total{method="POST",route="/v1/reserve",status="200"} 1"#
        ));
        assert!(text.contains("tollgate_http_request_duration_seconds_bucket"));
        assert!(text.contains(
            r#"tollgate_decisions_total{operation="reserve",outcome="denied",reason="limit_reached"} 1"#
        ));
        assert!(text.contains("tollgate_writer_batch_size_sum 3"));
        assert!(text.contains(r#"tollgate_errors_total{code="outcome_unknown"} 1"#));
        assert!(text.contains("tollgate_writer_queue_depth 7"));
        assert!(text.contains("tollgate_engine_projection_lag_records 5"));
        assert!(text.contains(r#"tollgate_engine_commands{path="memory"} 9"#));
        assert!(text.contains("tollgate_plan_load_failures_total 1"));
        assert!(text.contains("tollgate_plan_documents_not_loaded 2"));
    }
}
