//! Operator metrics (Prometheus), served on `/metrics` of the health port.
//!
//! Labels are bounded: error `category` comes from [`crate::Error::category`], managed
//! resources are counted per `kind`; no object names.

use std::{collections::BTreeMap, sync::Mutex, time::Instant};

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::error::Error;

/// The operator's metrics, registered in their own registry.
pub struct Metrics {
    registry: Registry,
    /// Reconciles started.
    pub reconciliations: IntCounter,
    /// Reconcile failures by error category.
    pub failures: IntCounterVec,
    /// Reconcile duration in seconds.
    pub duration: Histogram,
    /// Objects managed by the operator, by kind.
    pub managed: IntGaugeVec,
    /// Children of each InferenceService (key `namespace/name`), to compute `managed`.
    children: Mutex<BTreeMap<String, Vec<&'static str>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers the metrics.
    pub fn new() -> Self {
        let registry = Registry::new();
        let reconciliations = IntCounter::with_opts(Opts::new(
            "kinfer_operator_reconciliations_total",
            "Reconciles of InferenceServices",
        ))
        .expect("valid metric");
        let failures = IntCounterVec::new(
            Opts::new("kinfer_operator_reconcile_errors_total", "Failed reconciles by error category"),
            &["category"],
        )
        .expect("valid metric");
        let duration = Histogram::with_opts(
            HistogramOpts::new("kinfer_operator_reconcile_duration_seconds", "Duration of reconciles")
                .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
        )
        .expect("valid metric");
        let managed = IntGaugeVec::new(
            Opts::new("kinfer_operator_managed_resources", "Objects managed by the operator, by kind"),
            &["kind"],
        )
        .expect("valid metric");
        for m in [
            Box::new(reconciliations.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(failures.clone()),
            Box::new(duration.clone()),
            Box::new(managed.clone()),
        ] {
            registry.register(m).expect("metric registered once");
        }
        // kinfer_trace_spans_dropped_total (0 while tracing is off).
        kinfer_telemetry::register_metrics(&registry).expect("metric registered once");
        Self { registry, reconciliations, failures, duration, managed, children: Mutex::new(BTreeMap::new()) }
    }

    /// Counts a reconcile and returns a guard that observes its duration when dropped.
    pub fn reconcile_started(&self) -> ReconcileTimer<'_> {
        self.reconciliations.inc();
        ReconcileTimer { histogram: &self.duration, start: Instant::now() }
    }

    /// Counts a failed reconcile.
    pub fn reconcile_failed(&self, error: &Error) {
        self.failures.with_label_values(&[error.category()]).inc();
    }

    /// Records the children kinds of one InferenceService (`None`: it is gone).
    pub fn set_managed(&self, key: &str, kinds: Option<Vec<&'static str>>) {
        let Ok(mut children) = self.children.lock() else {
            return;
        };
        match kinds {
            Some(k) => {
                children.insert(key.to_string(), k);
            }
            None => {
                children.remove(key);
            }
        }
        let mut counts: BTreeMap<&str, i64> = BTreeMap::from([
            ("InferenceService", 0),
            ("Deployment", 0),
            ("Service", 0),
            ("HorizontalPodAutoscaler", 0),
            ("PodDisruptionBudget", 0),
        ]);
        for kinds in children.values() {
            *counts.entry("InferenceService").or_default() += 1;
            for k in kinds {
                *counts.entry(k).or_default() += 1;
            }
        }
        for (kind, n) in counts {
            self.managed.with_label_values(&[kind]).set(n);
        }
    }

    /// Keeps only the InferenceServices still present (keys `namespace/name`).
    pub fn retain_managed(&self, present: &std::collections::BTreeSet<String>) {
        let stale: Vec<String> = match self.children.lock() {
            Ok(c) => c.keys().filter(|k| !present.contains(*k)).cloned().collect(),
            Err(_) => return,
        };
        for k in stale {
            self.set_managed(&k, None);
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if TextEncoder::new().encode(&self.registry.gather(), &mut buf).is_err() {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Observes the reconcile duration when dropped.
pub struct ReconcileTimer<'a> {
    histogram: &'a Histogram,
    start: Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn managed_counts_follow_children_and_metrics_render() {
        let m = Metrics::new();
        m.set_managed("a/x", Some(vec!["Deployment", "Service"]));
        m.set_managed("a/y", Some(vec!["Deployment", "Service", "HorizontalPodAutoscaler"]));
        m.retain_managed(&["a/y".to_string()].into_iter().collect());
        let text = m.render();
        assert!(text.contains("kinfer_operator_managed_resources{kind=\"Deployment\"} 1"), "{text}");
        assert!(text.contains("kinfer_operator_managed_resources{kind=\"InferenceService\"} 1"));
        m.reconcile_failed(&Error::InvalidSpec("x".into()));
        drop(m.reconcile_started());
        let text = m.render();
        assert!(text.contains("kinfer_operator_reconcile_errors_total{category=\"invalid_spec\"} 1"));
        assert!(text.contains("kinfer_operator_reconciliations_total 1"));
        assert!(text.contains("kinfer_operator_reconcile_duration_seconds_count 1"));
    }
}
