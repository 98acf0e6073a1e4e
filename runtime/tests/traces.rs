//! OpenTelemetry traces against a real OTLP receiver on 127.0.0.1: the collector's TraceService
//! over gRPC (tonic, from `opentelemetry-proto`) and `POST /v1/traces` over HTTP/protobuf. The
//! runtime binary exports to it through the standard `OTEL_*` variables only.

mod support;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{body::Bytes, http::header, response::IntoResponse, routing::post};
use kinfer_runtime::protocol::grpc::pb::grpc_inference_service_client::GrpcInferenceServiceClient;
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::any_value::Value as Any,
    trace::v1::{Span, span::SpanKind},
};
use prost::Message;
use serde_json::{Value, json};
use support::*;

/// A span as received, with the resource's attributes.
#[derive(Clone, Debug)]
struct Got {
    span: Span,
    resource: HashMap<String, Any>,
}

impl Got {
    fn attr(&self, key: &str) -> Option<Any> {
        self.span.attributes.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.clone()?.value)
    }
    fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Got>>>,
}

impl Collector {
    fn take(&self, req: ExportTraceServiceRequest) {
        let mut spans = self.spans.lock().unwrap();
        for rs in req.resource_spans {
            let resource: HashMap<String, Any> = rs
                .resource
                .map(|r| r.attributes.into_iter().filter_map(|kv| Some((kv.key, kv.value?.value?))).collect())
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    spans.push(Got { span, resource: resource.clone() });
                }
            }
        }
    }

    /// Waits until the trace has a server span and at least `n` spans.
    async fn trace(&self, trace_id: &str, n: usize) -> Vec<Got> {
        let start = Instant::now();
        loop {
            let got: Vec<Got> =
                self.spans.lock().unwrap().iter().filter(|g| g.trace_id() == trace_id).cloned().collect();
            if got.len() >= n && got.iter().any(|g| g.span.kind == SpanKind::Server as i32) {
                return got;
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "trace {trace_id}: {} of {n} spans within 15 s: {:?}",
                got.len(),
                got.iter().map(|g| &g.span.name).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn all(&self) -> Vec<Got> {
        self.spans.lock().unwrap().clone()
    }
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.take(req.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

/// An OTLP receiver on 127.0.0.1: gRPC (`grpc`) or HTTP/protobuf. Returns its base URL.
async fn start_collector(grpc: bool) -> (Collector, String) {
    let collector = Collector::default();
    let app = if grpc {
        tonic::service::Routes::new(TraceServiceServer::new(collector.clone())).into_axum_router()
    } else {
        let c = collector.clone();
        axum::Router::new().route(
            "/v1/traces",
            post(move |body: Bytes| {
                let c = c.clone();
                async move {
                    match ExportTraceServiceRequest::decode(body) {
                        Ok(req) => {
                            c.take(req);
                            let resp = ExportTraceServiceResponse { partial_success: None }.encode_to_vec();
                            ([(header::CONTENT_TYPE, "application/x-protobuf")], resp).into_response()
                        }
                        Err(e) => (axum::http::StatusCode::BAD_REQUEST, e.to_string()).into_response(),
                    }
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind collector");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (collector, format!("http://{addr}"))
}

fn traced(base: &str, protocol: &str) -> RuntimeBuilder {
    runtime(model_path("mlp").display().to_string())
        .arg("--model-name", "mlp")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", base)
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
}

fn v2_body() -> Value {
    json!({"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": mlp_row()}]})
}

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

fn s(v: Option<Any>) -> String {
    match v {
        Some(Any::StringValue(s)) => s,
        other => panic!("not a string attribute: {other:?}"),
    }
}

fn i(v: Option<Any>) -> i64 {
    match v {
        Some(Any::IntValue(n)) => n,
        other => panic!("not an int attribute: {other:?}"),
    }
}

/// The server span, and its children by name (each exactly once, parented by it).
fn tree(spans: &[Got], stages: &[&str]) -> (Got, HashMap<String, Got>) {
    let servers: Vec<&Got> = spans.iter().filter(|g| g.span.kind == SpanKind::Server as i32).collect();
    assert_eq!(servers.len(), 1, "one server span: {spans:?}");
    let root = servers[0].clone();
    let mut children = HashMap::new();
    for name in stages {
        let found: Vec<&Got> = spans.iter().filter(|g| g.span.name == *name).collect();
        assert_eq!(found.len(), 1, "one {name} span in {:?}", spans.iter().map(|g| &g.span.name).collect::<Vec<_>>());
        assert_eq!(found[0].span.parent_span_id, root.span.span_id, "{name} is a child of the request span");
        assert!(found[0].span.start_time_unix_nano >= root.span.start_time_unix_nano, "{name} starts inside");
        assert!(found[0].span.end_time_unix_nano <= root.span.end_time_unix_nano, "{name} ends inside");
        children.insert(name.to_string(), found[0].clone());
    }
    (root, children)
}

fn access_line(stdout: &str, request_id: &str) -> Value {
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["target"] == "kinfer::access" && v["request_id"] == request_id)
        .unwrap_or_else(|| panic!("no access log line for {request_id} in:\n{stdout}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_requests_are_traced_over_http_protobuf_continuing_the_callers_trace() {
    let (collector, base) = start_collector(false).await;
    let s3 = S3::start().await;
    s3.bucket("logs");
    let mut rt = s3
        .runtime(&model_path("mlp").display().to_string(), ACCESS_KEY, SECRET_KEY)
        .arg("--model-name", "mlp")
        .arg("--log-uri", "s3://logs/audit/")
        .arg("--log-sample-rate", "1")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &base)
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=test")
        .ready()
        .await;

    let r = client()
        .post(rt.url("/v2/models/mlp/infer"))
        .header("traceparent", format!("00-{TRACE_ID}-{CALLER_SPAN}-01"))
        .header("tracestate", "vendor=x")
        .header("x-request-id", "traced-1")
        .json(&v2_body())
        .send()
        .await
        .expect("infer");
    assert_eq!(r.status(), 200);

    let spans = collector.trace(TRACE_ID, 6).await;
    let (root, children) = tree(&spans, &["decode", "queue_wait", "inference", "encode", "request_log.enqueue"]);
    assert_eq!(root.span.name, "POST /v2/models/{model}/infer");
    assert_eq!(hex(&root.span.parent_span_id), CALLER_SPAN, "continues the caller's span");
    assert_eq!(root.span.trace_state, "vendor=x");
    assert_eq!(s(root.attr("http.request.method")), "POST");
    assert_eq!(s(root.attr("http.route")), "/v2/models/{model}/infer");
    assert_eq!(s(root.attr("url.path")), "/v2/models/mlp/infer");
    assert_eq!(i(root.attr("http.response.status_code")), 200);
    assert_eq!(i(root.attr("server.port")), i64::from(rt.port));
    assert_eq!(s(root.attr("kinfer.model.name")), "mlp");
    assert_eq!(s(root.attr("kinfer.request.id")), "traced-1");
    assert!(root.attr("kinfer.model.version").is_some());
    assert_eq!(i(children["inference"].attr("kinfer.batch_size")), 1);
    // Queue wait ends where inference starts (both timed on the inference thread).
    assert!(children["queue_wait"].span.end_time_unix_nano <= children["inference"].span.start_time_unix_nano);
    assert!(children["decode"].span.end_time_unix_nano <= children["queue_wait"].span.start_time_unix_nano);
    // The service is the served model by default; OTEL_RESOURCE_ATTRIBUTES is applied.
    assert_eq!(root.resource.get("service.name"), Some(&Any::StringValue("mlp".into())));
    assert_eq!(root.resource.get("deployment.environment.name"), Some(&Any::StringValue("test".into())));

    // Without a traceparent: a new trace, the request span at its root.
    let (status, _, _) = rt.post_json("/v1/models/mlp:predict", &json!({"instances": [mlp_row()]})).await;
    assert_eq!(status, 200);
    let start = Instant::now();
    let v1_root = loop {
        if let Some(g) = collector.all().into_iter().find(|g| g.span.name == "POST /v1/models/{target}") {
            break g;
        }
        assert!(start.elapsed() < Duration::from_secs(15), "no span for the V1 request: {:?}", collector.all());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(v1_root.span.parent_span_id.is_empty(), "a root span");
    assert_ne!(v1_root.trace_id(), TRACE_ID);
    // A caller that did not sample its trace: nothing recorded (parent-based sampler), but the
    // access log still names the trace.
    let unsampled = "0af7651916cd43dd8448eb211c80319c";
    let r = client()
        .post(rt.url("/v2/models/mlp/infer"))
        .header("traceparent", format!("00-{unsampled}-{CALLER_SPAN}-00"))
        .header("x-request-id", "unsampled-1")
        .json(&v2_body())
        .send()
        .await
        .expect("infer");
    assert_eq!(r.status(), 200);
    // A sampled request after it: once its spans are in, the unsampled one's would be too.
    let last = "5b8efff798038103d269b633813fc60c";
    let r = client()
        .post(rt.url("/v2/models/mlp/infer"))
        .header("traceparent", format!("00-{last}-{CALLER_SPAN}-01"))
        .json(&v2_body())
        .send()
        .await
        .expect("infer");
    assert_eq!(r.status(), 200);
    // Probes and scrapes are not traced.
    let _ = rt.get_json("/v2/health/ready").await;
    let metrics = rt.metrics().await;
    assert!(metrics.contains("kinfer_trace_spans_dropped_total{reason=\"queue_full\"} 0"), "{metrics}");

    rt.sigterm();
    let (code, stdout, _) = rt.wait_exit(Duration::from_secs(20)).await;
    assert_eq!(code, 0);
    assert_eq!(access_line(&stdout, "traced-1")["trace_id"], TRACE_ID, "the trace id is in the access log");
    assert_eq!(access_line(&stdout, "unsampled-1")["trace_id"], unsampled);
    // The spans of the last request are exported (at the latest when the runtime shuts down);
    // the unsampled request's, queued before them, are not.
    assert!(collector.all().iter().any(|g| g.trace_id() == last), "the last request's spans were not exported");
    assert!(collector.all().iter().all(|g| g.trace_id() != unsampled), "an unsampled trace was exported");
    assert!(!collector.all().iter().any(|g| g.span.name.contains("health") || g.span.name.contains("metrics")));
    // The log output never shows the trace spans.
    assert!(!stdout.contains("\"spans\""), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_are_traced_over_otlp_grpc() {
    let (collector, base) = start_collector(true).await;
    let mut rt = traced(&base, "grpc").env("OTEL_SERVICE_NAME", "fraud-svc").ready().await;
    let mut c = GrpcInferenceServiceClient::connect(rt.grpc_url()).await.expect("connect");

    let mut req = tonic::Request::new(mlp_grpc_request("mlp", 1));
    req.metadata_mut().insert("traceparent", format!("00-{TRACE_ID}-{CALLER_SPAN}-01").parse().unwrap());
    req.metadata_mut().insert("x-request-id", "grpc-traced-1".parse().unwrap());
    c.model_infer(req).await.expect("infer");

    let spans = collector.trace(TRACE_ID, 5).await;
    let (root, children) = tree(&spans, &["decode", "queue_wait", "inference", "encode"]);
    assert_eq!(root.span.name, "inference.GRPCInferenceService/ModelInfer");
    assert_eq!(hex(&root.span.parent_span_id), CALLER_SPAN);
    assert_eq!(s(root.attr("rpc.system")), "grpc");
    assert_eq!(s(root.attr("rpc.service")), "inference.GRPCInferenceService");
    assert_eq!(s(root.attr("rpc.method")), "ModelInfer");
    assert_eq!(i(root.attr("rpc.grpc.status_code")), 0);
    assert_eq!(i(root.attr("server.port")), i64::from(rt.grpc_port));
    assert_eq!(s(root.attr("kinfer.request.id")), "grpc-traced-1");
    assert_eq!(i(children["inference"].attr("kinfer.batch_size")), 1);
    assert_eq!(root.resource.get("service.name"), Some(&Any::StringValue("fraud-svc".into())));

    // A failed call carries its gRPC code.
    let other = "0af7651916cd43dd8448eb211c80319c";
    let mut req = tonic::Request::new(mlp_grpc_request("no-such-model", 1));
    req.metadata_mut().insert("traceparent", format!("00-{other}-{CALLER_SPAN}-01").parse().unwrap());
    let e = c.model_infer(req).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    let spans = collector.trace(other, 1).await;
    let root = spans.iter().find(|g| g.span.kind == SpanKind::Server as i32).expect("server span");
    assert_eq!(i(root.attr("rpc.grpc.status_code")), tonic::Code::NotFound as i64);

    rt.sigterm();
    let (_, stdout, _) = rt.wait_exit(Duration::from_secs(20)).await;
    assert_eq!(access_line(&stdout, "grpc-traced-1")["trace_id"], TRACE_ID);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_costs_nothing_but_a_counter() {
    // A collector that takes connections and never answers: each export waits for its timeout,
    // and the queue of 4 spans overflows at once.
    let hung = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let down = format!("http://{}", hung.local_addr().expect("addr"));
    let rt = traced(&down, "grpc")
        .env("OTEL_BSP_MAX_QUEUE_SIZE", "4")
        .env("OTEL_EXPORTER_OTLP_TIMEOUT", "300")
        .ready()
        .await;
    for _ in 0..20 {
        let (status, body, _) = rt.post_json("/v2/models/mlp/infer", &v2_body()).await;
        assert_eq!(status, 200, "{body}");
    }
    let start = Instant::now();
    loop {
        let m = rt.metrics().await;
        let count = |reason: &str| -> u64 {
            let prefix = format!("kinfer_trace_spans_dropped_total{{reason=\"{reason}\"}} ");
            m.lines().find_map(|l| l.strip_prefix(prefix.as_str())).and_then(|v| v.parse().ok()).unwrap_or(0)
        };
        if count("queue_full") > 0 && count("export_failed") > 0 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "no drops counted:\n{m}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn bad_trace_settings_stop_the_start_naming_the_variable() {
    let mut rt = runtime(model_path("mlp").display().to_string())
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
        .env("OTEL_TRACES_SAMPLER", "sometimes")
        .spawn();
    let (code, _, stderr) = rt.wait_exit(Duration::from_secs(20)).await;
    assert_eq!(code, 1);
    assert!(stderr.contains("OTEL_TRACES_SAMPLER") && stderr.contains("sometimes"), "{stderr}");
}

#[tokio::test]
async fn without_an_endpoint_there_is_no_trace_id_in_the_log() {
    let mut rt = runtime(model_path("mlp").display().to_string()).arg("--model-name", "mlp").ready().await;
    let r = client()
        .post(rt.url("/v2/models/mlp/infer"))
        .header("traceparent", format!("00-{TRACE_ID}-{CALLER_SPAN}-01"))
        .header("x-request-id", "untraced-1")
        .json(&v2_body())
        .send()
        .await
        .expect("infer");
    assert_eq!(r.status(), 200);
    rt.sigterm();
    let (_, stdout, _) = rt.wait_exit(Duration::from_secs(20)).await;
    assert!(access_line(&stdout, "untraced-1").get("trace_id").is_none(), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_spans_are_exported_at_shutdown() {
    for grpc in [false, true] {
        let (collector, base) = start_collector(grpc).await;
        // No timed export: only the shutdown sends them.
        let mut rt = traced(&base, if grpc { "grpc" } else { "http/protobuf" })
            .env("OTEL_BSP_SCHEDULE_DELAY", "600000")
            .ready()
            .await;
        let (status, _, _) = rt.post_json("/v2/models/mlp/infer", &v2_body()).await;
        assert_eq!(status, 200);
        assert!(collector.all().is_empty(), "exported before shutdown");
        rt.sigterm();
        let (code, _, _) = rt.wait_exit(Duration::from_secs(20)).await;
        assert_eq!(code, 0);
        let names: Vec<String> = collector.all().into_iter().map(|g| g.span.name).collect();
        assert!(
            names.iter().any(|n| n == "POST /v2/models/{model}/infer") && names.len() >= 5,
            "grpc={grpc}: {names:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_forwarded_to_the_canary_continues_the_trace_under_the_stable_span() {
    let (collector, base) = start_collector(false).await;
    let canary =
        traced(&base, "http/protobuf").arg("--model-version", "2").env("OTEL_SERVICE_NAME", "mlp-canary").ready().await;
    let stable = traced(&base, "http/protobuf")
        .env("KINFER_CANARY_URL", &canary.base)
        .env("KINFER_CANARY_GRPC_URL", canary.grpc_url())
        .env("KINFER_CANARY_PERCENT", "100")
        .env("KINFER_CANARY_VERSION", "2")
        .ready()
        .await;
    let r = client()
        .post(stable.url("/v2/models/mlp/infer"))
        .header("traceparent", format!("00-{TRACE_ID}-{CALLER_SPAN}-01"))
        .json(&v2_body())
        .send()
        .await
        .expect("infer");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers().get("x-kinfer-model-version").unwrap(), "2", "the canary answered");
    let servers = |spans: &[Got], service: &str| -> Vec<Got> {
        spans
            .iter()
            .filter(|g| g.span.kind == SpanKind::Server as i32)
            .filter(|g| g.resource.get("service.name") == Some(&Any::StringValue(service.into())))
            .cloned()
            .collect()
    };
    // REST: the stable pod's span is the caller's child, the canary's the stable span's child.
    let start = Instant::now();
    let (outer, inner) = loop {
        let spans = collector.all();
        let (o, i) = (servers(&spans, "mlp"), servers(&spans, "mlp-canary"));
        if o.len() == 1 && i.len() == 1 {
            break (o[0].clone(), i[0].clone());
        }
        assert!(start.elapsed() < Duration::from_secs(15), "server spans: {} stable, {} canary", o.len(), i.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!((outer.trace_id(), hex(&outer.span.parent_span_id)), (TRACE_ID.to_string(), CALLER_SPAN.to_string()));
    assert_eq!(inner.trace_id(), TRACE_ID);
    assert_eq!(inner.span.parent_span_id, outer.span.span_id, "the canary continues the stable pod's span");

    // gRPC: the same through metadata.
    let grpc_trace = "0af7651916cd43dd8448eb211c80319c";
    let mut c = GrpcInferenceServiceClient::connect(stable.grpc_url()).await.expect("connect");
    let mut req = tonic::Request::new(mlp_grpc_request("mlp", 1));
    req.metadata_mut().insert("traceparent", format!("00-{grpc_trace}-{CALLER_SPAN}-01").parse().unwrap());
    c.model_infer(req).await.expect("infer");
    let start = Instant::now();
    let (outer, inner) = loop {
        let spans: Vec<Got> = collector.all().into_iter().filter(|g| g.trace_id() == grpc_trace).collect();
        let (o, i) = (servers(&spans, "mlp"), servers(&spans, "mlp-canary"));
        if o.len() == 1 && i.len() == 1 {
            break (o[0].clone(), i[0].clone());
        }
        assert!(start.elapsed() < Duration::from_secs(15), "gRPC server spans: {} stable, {} canary", o.len(), i.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(outer.span.name, "inference.GRPCInferenceService/ModelInfer");
    assert_eq!(inner.span.parent_span_id, outer.span.span_id);
}
