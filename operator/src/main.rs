//! The kinfer-operator binary: flags/env, logging, the health/metrics server, leader
//! election on a Lease, and the controllers.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use kinfer_operator::{
    config::{DEFAULT_CONCURRENCY, DEFAULT_RUNTIME_IMAGE, OperatorConfig},
    controller,
    leader::{self, LeaseSettings},
    metrics::Metrics,
    server::{Health, router},
};
use kube::{Client, runtime::events::Reporter};
use tracing::{info, warn};
use tracing_subscriber::{EnvFilter, Layer, fmt, prelude::*};

/// Log output format.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable lines.
    Text,
}

/// kinfer-operator: serves InferenceServices (serving.kinfer.dev/v1alpha1) with the kinfer
/// runtime. Uses the in-cluster config or the current kubeconfig context.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Runtime image for InferenceServices that do not set spec.runtime.image.
    #[arg(long, env = "KINFER_RUNTIME_IMAGE", default_value = DEFAULT_RUNTIME_IMAGE)]
    runtime_image: String,

    /// Namespaces to watch, comma-separated. Empty: all namespaces.
    #[arg(long, env = "KINFER_WATCH_NAMESPACES", value_delimiter = ',', default_value = "")]
    namespaces: Vec<String>,

    /// Cluster DNS domain, used in status.url.
    #[arg(long, env = "KINFER_CLUSTER_DOMAIN", default_value = "cluster.local")]
    cluster_domain: String,

    /// InferenceServices reconciled at the same time (0: no limit). Each reconcile makes its
    /// API calls concurrently too; the kube client has no client-side rate limit.
    #[arg(long, env = "KINFER_CONCURRENCY", default_value_t = DEFAULT_CONCURRENCY)]
    concurrency: u16,

    /// Seconds after which a settled InferenceService is reconciled again. A resync that finds
    /// nothing changed writes nothing.
    #[arg(long, env = "KINFER_RESYNC_SECONDS", default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..))]
    resync_seconds: u64,

    /// Log filter (tracing EnvFilter syntax, e.g. `info` or `kinfer_operator=debug,info`).
    #[arg(long, env = "KINFER_LOG_LEVEL", default_value = "info")]
    log_level: String,

    /// Log format.
    #[arg(long, env = "KINFER_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,

    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "KINFER_HEALTH_ADDR", default_value = "0.0.0.0:8081")]
    health_addr: SocketAddr,

    /// Leader election on a coordination.k8s.io Lease, so that several replicas are safe.
    /// Turn off for local runs: `--leader-election=false`.
    #[arg(long, env = "KINFER_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,

    /// Name of the Lease.
    #[arg(long, env = "KINFER_LEASE_NAME", default_value = "kinfer-operator")]
    lease_name: String,

    /// Namespace of the Lease (the operator's own namespace). Default: the client's default
    /// namespace.
    #[arg(long, env = "POD_NAMESPACE")]
    lease_namespace: Option<String>,

    /// Identity in the Lease and in events. Default: the pod name or the host name.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("kinfer-operator: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    // Traces (OTEL_* variables): off without an endpoint.
    let traces = kinfer_telemetry::Settings::from_env().map_err(|e| anyhow::anyhow!("invalid trace settings: {e}"))?;
    let tracing = match &traces {
        Some(settings) => Some(
            kinfer_telemetry::Tracing::init(settings, "kinfer-operator", env!("CARGO_PKG_VERSION"))
                .map_err(anyhow::Error::msg)?,
        ),
        None => None,
    };
    // The log never shows the trace spans.
    let filter = EnvFilter::try_new(&args.log_level)
        .with_context(|| format!("invalid --log-level {:?}", args.log_level))?
        .add_directive(format!("{}=off", kinfer_telemetry::TARGET).parse().context("trace target directive")?);
    let log = match args.log_format {
        LogFormat::Json => fmt::layer().json().flatten_event(true).boxed(),
        LogFormat::Text => fmt::layer().boxed(),
    };
    tracing_subscriber::registry().with(log.with_filter(filter)).with(tracing.as_ref().map(|t| t.layer())).init();
    if let Some(s) = &traces {
        info!(endpoint = %s.endpoint, protocol = ?s.protocol, sampler = ?s.sampler, "traces exported over OTLP");
    }
    let result = serve(args).await;
    if let Some(t) = tracing {
        // Exports the last spans; blocks up to the exporter's timeout.
        let _ = tokio::task::spawn_blocking(move || t.shutdown()).await;
    }
    result
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let identity = args
        .identity
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "kinfer-operator".to_string());
    let config = OperatorConfig {
        runtime_image: args.runtime_image.clone(),
        cluster_domain: args.cluster_domain.clone(),
        concurrency: args.concurrency,
        resync: std::time::Duration::from_secs(args.resync_seconds),
        // Runtime pods without spec.tracing inherit the operator's collector and sampler.
        tracing: kinfer_operator::config::TracingDefaults::from_env(),
    };
    let namespaces: Vec<String> =
        args.namespaces.iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
    info!(image = %config.runtime_image, ?namespaces, leader_election = args.leader_election,
        concurrency = config.concurrency, "starting kinfer-operator");

    let metrics = Arc::new(Metrics::new());
    let ready = Arc::new(AtomicBool::new(false));
    let health = Health { metrics: metrics.clone(), ready: ready.clone() };
    let listener = tokio::net::TcpListener::bind(args.health_addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.health_addr))?;
    info!(addr = %args.health_addr, "serving /healthz, /readyz, /metrics");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router(health)).await {
            warn!(error = %e, "health server stopped");
        }
    });

    let client =
        Client::try_default().await.context("no Kubernetes client: neither in-cluster config nor a kubeconfig")?;
    let reporter = Reporter { controller: "kinfer-operator".into(), instance: Some(identity.clone()) };
    let controllers = controller::run(client.clone(), config, namespaces, metrics, reporter);

    if !args.leader_election {
        ready.store(true, Ordering::Relaxed);
        return tokio::select! {
            r = controllers => r,
            _ = shutdown_signal() => { info!("shutting down"); Ok(()) }
        };
    }

    let lease_ns = args.lease_namespace.clone().unwrap_or_else(|| client.default_namespace().to_string());
    leader::run_as_leader(
        client,
        LeaseSettings::new(&args.lease_name, &lease_ns, &identity),
        // A standby replica is ready: it can take over at any moment.
        || ready.store(true, Ordering::Relaxed),
        || controllers,
        shutdown_signal(),
    )
    .await
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
