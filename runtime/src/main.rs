use std::{
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use clap::Parser;
use kinfer_runtime::{
    Fatal,
    config::{Config, LogFormat},
    listener, load_models, model, new_metrics,
    protocol::Limits,
    server, write_termination_log,
};
use tokio::net::TcpListener;

/// mimalloc instead of glibc malloc: a request allocates and frees dozens of small buffers
/// (headers, JSON, tensors) across threads; see docs/benchmarks.md for the measured difference.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The log output (stdout), and the trace exporter's layer when tracing is on. The log never
/// shows the trace spans (their target is filtered out of it).
fn init_logging(format: LogFormat, tracing: Option<&kinfer_telemetry::Tracing>) {
    use tracing_subscriber::{Layer, layer::SubscriberExt, util::SubscriberInitExt};
    let filter = tracing_subscriber::EnvFilter::try_from_env("KINFER_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let filter = match format!("{}=off", kinfer_telemetry::TARGET).parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    };
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stdout);
    let fmt = match format {
        LogFormat::Json => fmt.json().flatten_event(true).with_current_span(false).boxed(),
        LogFormat::Text => fmt.boxed(),
    };
    tracing_subscriber::registry().with(fmt.with_filter(filter)).with(tracing.map(|t| t.layer())).init();
    // Access lines go through their own writer thread, in the same format.
    kinfer_runtime::accesslog::init(format);
}

/// Logs the fatal error, writes it to the termination log, and exits 1.
fn die(cfg: &Config, e: &Fatal) -> ! {
    tracing::error!(error = %e, "fatal start-up error");
    eprintln!("kinfer-runtime: {e}");
    write_termination_log(cfg, &e.to_string());
    kinfer_runtime::accesslog::flush(Duration::from_millis(500));
    std::process::exit(1);
}

fn main() {
    let cfg = Config::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => die(&cfg, &Fatal(format!("cannot start the async runtime: {e}"))),
    };
    // Traces (OTEL_* variables): the exporter's gRPC channel lives on the runtime.
    let tracing = match kinfer_telemetry::Settings::from_env() {
        Ok(None) => Ok(None),
        Ok(Some(settings)) => {
            let _rt = rt.enter();
            kinfer_telemetry::Tracing::init(&settings, &cfg.served_name(), env!("CARGO_PKG_VERSION"))
                .map(|t| Some((t, settings)))
        }
        Err(e) => Err(e),
    };
    init_logging(cfg.log_format, tracing.as_ref().ok().and_then(|t| t.as_ref().map(|(t, _)| t)));
    let tracing = match tracing {
        Ok(Some((t, settings))) => {
            tracing::info!(endpoint = %settings.endpoint, protocol = ?settings.protocol, sampler = ?settings.sampler, "traces exported over OTLP");
            Some(t)
        }
        Ok(None) => None,
        Err(e) => die(&cfg, &Fatal(format!("invalid trace settings: {e}"))),
    };
    // The library is checked before anything else: a missing one is one clear line.
    let env = match model::init_onnxruntime() {
        Ok(env) => Arc::new(env),
        Err(e) => die(&cfg, &Fatal(e.to_string())),
    };
    if let Err(e) = rt.block_on(run(cfg.clone(), env)) {
        die(&cfg, &e);
    }
    // The spans of the last requests.
    if let Some(t) = tracing {
        t.shutdown();
    }
}

async fn run(cfg: Config, env: Arc<ort::environment::Environment>) -> Result<(), Fatal> {
    let models = cfg.model_specs().map_err(Fatal)?;
    let metrics = new_metrics()?;
    let access = kinfer_runtime::access::Access::new(
        cfg.auth_tokens.as_deref(),
        cfg.auth_tokens_file.as_deref(),
        cfg.rate_limit_rps,
        cfg.rate_limit_burst,
        cfg.max_concurrency,
    )
    .map_err(Fatal)?;
    let cors = kinfer_runtime::access::cors_layer(cfg.cors_origins.as_deref()).map_err(Fatal)?;
    let log = kinfer_runtime::start_request_log(&cfg, &metrics).await?;
    let cache = kinfer_runtime::start_cache(&cfg, &metrics)?;
    let state = server::new_state(
        server::StateConfig {
            models: models.clone(),
            control: cfg.model_control,
            limits: Limits { max_rows: cfg.max_rows.max(1) },
            request_timeout: Duration::from_millis(cfg.request_timeout_ms.max(1)),
            max_body_bytes: cfg.max_body_bytes,
            body_timeout: Duration::from_millis(cfg.body_timeout_ms),
            cache,
        },
        metrics,
        access,
        log.clone(),
    );
    if let Some(settings) = kinfer_runtime::canary::Settings::from_config(&cfg).map_err(Fatal)? {
        let [model] = models.as_slice() else {
            return Err(Fatal(format!(
                "KINFER_CANARY_URL routes one model to its canary, but this runtime serves {} models \
                 (KINFER_MODELS): a canary needs the one-model configuration",
                models.len()
            )));
        };
        let canary = kinfer_runtime::canary::Canary::start(settings, &state.metrics, &model.name).map_err(Fatal)?;
        let _ = state.canary.set(canary);
    }
    let (listener, addr) = listen(&cfg.host, cfg.port).await?;
    // Both ports share the descriptor budget.
    let ports = if cfg.grpc_port == 0 { 1 } else { 2 };
    let limits = connection_limits(&cfg, ports);
    tracing::info!(%addr, models = ?models.iter().map(|m| format!("{}:{} {}", m.name, m.version, m.uri)).collect::<Vec<_>>(),
        control = ?cfg.model_control, "listening (live; loading the models)");
    // gRPC on its own port; it starts draining when the HTTP server does.
    let (drain_tx, mut drain_rx) = tokio::sync::watch::channel(false);
    let grpc = match cfg.grpc_port {
        0 => None,
        port => {
            let (grpc_listener, grpc_addr) = listen(&cfg.host, port).await?;
            tracing::info!(addr = %grpc_addr, "gRPC listening");
            let drained = async move {
                let _ = drain_rx.wait_for(|d| *d).await;
            };
            Some(tokio::spawn(kinfer_runtime::grpc::serve(grpc_listener, state.clone(), limits.clone(), drained)))
        }
    };

    // Live at once; ready once every model has loaded and a warm-up inference succeeded.
    let loader_state = state.clone();
    let loader_cfg = cfg.clone();
    let loader = tokio::spawn(async move { load_models(&loader_cfg, &loader_state, env).await });
    let watch_cfg = cfg.clone();
    tokio::spawn(async move {
        // Any loader failure, a panic included, ends the process: a pod must never sit live
        // and forever unready.
        match loader.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => die(&watch_cfg, &e),
            Err(e) => die(&watch_cfg, &Fatal(format!("model loading failed unexpectedly: {e}"))),
        }
    });

    let shutdown_state = state.clone();
    let delay = Duration::from_secs(cfg.shutdown_delay_seconds);
    let metrics = state.metrics.clone();
    let app = server::router(state, cors);
    listener::serve(listener, app, limits, metrics, async move {
        shutdown_signal().await;
        // Readiness turns false at once; in-flight and already-routed requests still finish.
        shutdown_state.shutting_down.store(true, Ordering::Release);
        shutdown_state.metrics.model_ready.reset();
        tracing::info!(delay_s = delay.as_secs(), "SIGTERM: not ready; draining");
        tokio::time::sleep(delay).await;
        let _ = drain_tx.send(true);
    })
    .await;
    if let Some(grpc) = grpc
        && let Err(e) = grpc.await
    {
        return Err(Fatal(format!("gRPC server failed: {e}")));
    }
    if let Some(log) = &log {
        let limit = Duration::from_secs(cfg.log_flush_timeout_seconds);
        if log.flush(limit).await {
            tracing::info!("request log flushed");
        } else {
            tracing::warn!(timeout_s = limit.as_secs(), "request log not fully flushed before the deadline");
        }
    }
    tracing::info!("drained; exiting");
    if !kinfer_runtime::accesslog::flush(Duration::from_secs(2)) {
        tracing::warn!("access log lines not written before exit");
    }
    Ok(())
}

/// The connection limits of each port, with `KINFER_MAX_CONNECTIONS` lowered so that `ports`
/// listeners together fit the descriptor limit.
fn connection_limits(cfg: &Config, ports: u64) -> listener::ConnLimits {
    let wanted = usize::try_from(cfg.max_connections).unwrap_or(usize::MAX);
    let reserve = listener::RESERVE_CONNECTIONS;
    let max_connections = match listener::raise_fd_limit() {
        Ok(fds) => {
            let fit = listener::fit_connections(wanted, reserve, fds.soft / ports);
            if fit < wanted {
                tracing::warn!(
                    max_connections = fit,
                    requested = wanted,
                    reserve,
                    nofile_soft = fds.soft,
                    nofile_hard = fds.hard,
                    "KINFER_MAX_CONNECTIONS lowered to fit the file descriptor limit (RLIMIT_NOFILE)"
                );
            } else {
                tracing::info!(
                    max_connections = fit,
                    reserve,
                    nofile_soft = fds.soft,
                    nofile_hard = fds.hard,
                    "connection limit"
                );
            }
            fit
        }
        Err(e) => {
            tracing::warn!(error = %e, max_connections = wanted, "cannot read the file descriptor limit");
            wanted
        }
    };
    listener::ConnLimits {
        max_connections,
        reserve,
        header_timeout: Duration::from_millis(cfg.header_timeout_ms),
        idle_timeout: Duration::from_secs(cfg.idle_timeout_seconds),
    }
}

/// Binds `host:port` (IPv6 hosts with or without brackets).
async fn listen(host: &str, port: u16) -> Result<(TcpListener, SocketAddr), Fatal> {
    let addr: SocketAddr = format!("{host}:{port}")
        .parse()
        .or_else(|_| format!("[{host}]:{port}").parse())
        .map_err(|_| Fatal(format!("invalid listen address {host}:{port}")))?;
    let listener = TcpListener::bind(addr).await.map_err(|e| Fatal(format!("cannot listen on {addr}: {e}")))?;
    Ok((listener, addr))
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
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
