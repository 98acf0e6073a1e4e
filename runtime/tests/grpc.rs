//! The gRPC port against real clients on 127.0.0.1: NVIDIA's `tritonclient.grpc` unchanged (from
//! the project's Python venv) for every example model, and tonic clients generated from the same
//! proto for errors, auth, limits, deadlines, request ids, metrics, health and reflection.

mod support;

use std::{path::PathBuf, process::Command, time::Duration};

use kinfer_runtime::protocol::grpc::pb::{
    self, InferParameter, InferTensorContents, grpc_inference_service_client::GrpcInferenceServiceClient,
    infer_parameter::ParameterChoice,
};
use prost::Message;
use support::*;
use tonic::{Code, transport::Channel};

/// The venv's Python (`KINFER_TEST_PYTHON`, set by the Makefile, or .tools/venv).
fn python() -> Option<PathBuf> {
    let p = std::env::var("KINFER_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo().join(".tools/venv/bin/python"));
    p.is_file().then_some(p)
}

async fn channel(rt: &Runtime) -> Channel {
    Channel::from_shared(rt.grpc_url()).expect("url").connect().await.expect("connect to the gRPC port")
}

async fn connect(rt: &Runtime) -> GrpcInferenceServiceClient<Channel> {
    GrpcInferenceServiceClient::connect(rt.grpc_url()).await.expect("connect to the gRPC port")
}

fn int_param(v: i64) -> InferParameter {
    InferParameter { parameter_choice: Some(ParameterChoice::Int64Param(v)) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tritonclient_grpc_works_unchanged_for_every_example_model() {
    let Some(py) = python() else {
        // `make test` always builds the venv; only a bare `cargo test` gets here.
        assert!(std::env::var("CI").is_err(), "the test venv is missing in CI: run `make venv`");
        eprintln!("SKIPPED: no Python venv with tritonclient; run `make venv` (make test does)");
        return;
    };
    let mut models = 0;
    for entry in std::fs::read_dir(repo().join("examples/models")).expect("examples/models") {
        let dir = entry.expect("entry").path();
        let Some(model) = dir.file_name().and_then(|n| n.to_str()).map(str::to_string) else { continue };
        if !dir.join("expected.json").is_file() {
            continue; // e.g. iris_zipmap: a model the runtime refuses at load, on purpose
        }
        let exp = expected(&model);
        let mut b = runtime(model_path(&model).display().to_string()).arg("--model-name", model.as_str());
        if let Some(pre) = exp["preprocess"].as_str() {
            b = b.env("KINFER_IMAGE_PREPROCESS", pre);
        }
        let rt = b.ready().await;
        let out = Command::new(&py)
            .arg(repo().join("runtime/tests/clients/triton_grpc.py"))
            .arg(format!("127.0.0.1:{}", rt.grpc_port))
            .arg(&model)
            .arg(dir.join("expected.json"))
            .output()
            .expect("run python");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "tritonclient.grpc failed for {model}:\n{stdout}\n{stderr}");
        assert!(stdout.contains("tritonclient.grpc: all checks passed"), "{stdout}");
        eprintln!("{model}: {stdout}");
        let m = rt.metrics().await;
        assert!(
            m.contains(&format!(r#"kinfer_requests_total{{code="200",model="{model}",protocol="grpc",version="1"}}"#)),
            "{m}"
        );
        assert!(
            m.contains(&format!(r#"kinfer_requests_total{{code="400",model="{model}",protocol="grpc",version="1"}}"#)),
            "{m}"
        );
        models += 1;
    }
    assert_eq!(models, 4, "iris, mlp, orientation and tabular have expected.json");
}

#[tokio::test]
async fn errors_are_grpc_codes_with_the_message_naming_the_field() {
    let rt = runtime(model_path("mlp").display().to_string()).arg("--model-name", "mlp").ready().await;
    let mut c = connect(&rt).await;

    // Wrong datatype field, wrong shape, unknown output, unknown model, unknown version.
    let mut r = mlp_grpc_request("mlp", 1);
    let values = r.inputs[0].contents.take().expect("contents").fp32_contents;
    r.inputs[0].contents = Some(InferTensorContents {
        fp64_contents: values.iter().map(|v| f64::from(*v)).collect(),
        ..Default::default()
    });
    let e = c.model_infer(r).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(
        e.message().contains("inputs[0] ('input'): datatype FP32 takes its values in contents.fp32_contents"),
        "{e:?}"
    );

    let mut r = mlp_grpc_request("mlp", 1);
    r.inputs[0].shape = vec![1, 29];
    let e = c.model_infer(r).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("input 'input' has shape [1, 29], expected [-1, 30]"), "{e:?}");

    let mut r = mlp_grpc_request("mlp", 1);
    r.outputs = vec![pb::model_infer_request::InferRequestedOutputTensor {
        name: "nope".into(),
        parameters: Default::default(),
    }];
    let e = c.model_infer(r).await.unwrap_err();
    assert!(e.message().contains("unknown output 'nope'"), "{e:?}");

    let e = c.model_infer(mlp_grpc_request("fraud", 1)).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().contains("model 'fraud' not found; this server serves 'mlp'"), "{e:?}");
    let mut r = mlp_grpc_request("mlp", 1);
    r.model_version = "2".into();
    assert_eq!(c.model_infer(r).await.unwrap_err().code(), Code::NotFound);
    let e =
        c.model_metadata(pb::ModelMetadataRequest { name: "fraud".into(), version: String::new() }).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = c.model_ready(pb::ModelReadyRequest { name: "fraud".into(), version: String::new() }).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    // Rows over KINFER_MAX_BATCH_ROWS: INVALID_ARGUMENT naming the limit, as on REST.
    let e = c.model_infer(mlp_grpc_request("mlp", 1001)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("exceeds the limit of 1000 rows per request (KINFER_MAX_BATCH_ROWS)"), "{e:?}");

    let m = rt.metrics().await;
    assert!(m.contains(r#"kinfer_requests_total{code="400",model="mlp",protocol="grpc",version="1"} 4"#), "{m}");
    assert!(
        m.contains(r#"kinfer_requests_total{code="404",model="unknown",protocol="grpc",version="unknown"} 2"#),
        "{m}"
    );
    assert!(m.contains("kinfer_requests_in_flight 0"), "{m}");
}

#[tokio::test]
async fn request_ids_come_from_metadata_or_the_request_id() {
    let rt = runtime(model_path("mlp").display().to_string()).arg("--model-name", "mlp").ready().await;
    let mut c = connect(&rt).await;

    // x-request-id in metadata wins and comes back in the response metadata.
    let mut msg = mlp_grpc_request("mlp", 2);
    msg.id = "body-id".into();
    let mut req = tonic::Request::new(msg.clone());
    req.metadata_mut().insert("x-request-id", "meta-id".parse().unwrap());
    let resp = c.model_infer(req).await.expect("infer");
    assert_eq!(resp.metadata().get("x-request-id").unwrap(), "meta-id");
    let body = resp.into_inner();
    assert_eq!(body.id, "body-id", "the request's id is echoed in the response");
    assert_eq!((body.model_name.as_str(), body.model_version.as_str()), ("mlp", "1"));
    assert_eq!(body.outputs[0].shape, vec![2, 1]);
    assert_eq!(body.outputs[0].contents.as_ref().expect("typed").fp32_contents.len(), 2);

    // Without metadata the request's id is the request id; without either, a new one.
    let resp = c.model_infer(msg).await.expect("infer");
    assert_eq!(resp.metadata().get("x-request-id").unwrap(), "body-id");
    let resp = c.model_infer(mlp_grpc_request("mlp", 1)).await.expect("infer");
    let id = resp.metadata().get("x-request-id").expect("x-request-id").to_str().unwrap().to_string();
    assert_eq!(id.len(), 36, "a uuid: {id}");
    assert!(resp.into_inner().id.is_empty());

    // Errors carry it too.
    let mut req = tonic::Request::new(mlp_grpc_request("fraud", 1));
    req.metadata_mut().insert("x-request-id", "err-id".parse().unwrap());
    let e = c.model_infer(req).await.unwrap_err();
    assert_eq!(e.metadata().get("x-request-id").unwrap(), "err-id");
}

#[tokio::test]
async fn bearer_tokens_in_metadata_guard_the_model_rpcs() {
    let rt = runtime(model_path("mlp").display().to_string())
        .arg("--model-name", "mlp")
        .env("KINFER_AUTH_TOKENS", "s3cret")
        .ready()
        .await;
    let mut c = connect(&rt).await;
    let e = c.model_infer(mlp_grpc_request("mlp", 1)).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().contains("missing bearer token"), "{e:?}");
    let mut req = tonic::Request::new(mlp_grpc_request("mlp", 1));
    req.metadata_mut().insert("authorization", "Bearer wrong".parse().unwrap());
    let e = c.model_infer(req).await.unwrap_err();
    assert_eq!((e.code(), e.message()), (Code::Unauthenticated, "invalid bearer token"));
    let e =
        c.model_metadata(pb::ModelMetadataRequest { name: "mlp".into(), version: String::new() }).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);

    let mut req = tonic::Request::new(mlp_grpc_request("mlp", 1));
    req.metadata_mut().insert("authorization", "Bearer s3cret".parse().unwrap());
    c.model_infer(req).await.expect("the right token is let in");
    // Liveness, readiness, server metadata and gRPC health stay open, as on REST.
    assert!(c.server_live(pb::ServerLiveRequest {}).await.expect("live").into_inner().live);
    assert!(c.server_ready(pb::ServerReadyRequest {}).await.expect("ready").into_inner().ready);
    c.server_metadata(pb::ServerMetadataRequest {}).await.expect("metadata");
    let mut h = tonic_health::pb::health_client::HealthClient::new(channel(&rt).await);
    let s = h.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.expect("check");
    assert_eq!(s.into_inner().status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
    let m = rt.metrics().await;
    assert!(m.contains(r#"kinfer_requests_total{code="401",model="mlp",protocol="grpc",version="1"} 2"#), "{m}");
}

/// A raw HTTP/2 gRPC call carrying `grpc-timeout`, from a client that does not enforce the
/// deadline itself (as every real client does), so the server's own answer is seen.
async fn raw_call_with_grpc_timeout(port: u16, msg: &pb::ModelInferRequest, timeout: &str) -> (String, String) {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
    let (client, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(conn);
    let mut client = client.ready().await.expect("h2 ready");
    let req = http::Request::post(format!("http://127.0.0.1:{port}/inference.GRPCInferenceService/ModelInfer"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", timeout)
        .body(())
        .expect("request");
    let (resp, mut send) = client.send_request(req, false).expect("send");
    let payload = msg.encode_to_vec();
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    framed.extend_from_slice(&payload);
    send.send_data(framed.into(), true).expect("data");
    let resp = resp.await.expect("response");
    let mut headers = resp.headers().clone();
    if !headers.contains_key("grpc-status") {
        let mut body = resp.into_body();
        while let Some(chunk) = body.data().await {
            let _ = chunk.expect("body");
        }
        headers = body.trailers().await.expect("trailers").expect("grpc trailers");
    }
    let get = |k: &str| headers.get(k).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    (get("grpc-status"), get("grpc-message"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_and_deadlines_answer_resource_exhausted_and_deadline_exceeded() {
    // A long batching delay holds requests inside the server.
    let rt = runtime(model_path("mlp").display().to_string())
        .arg("--model-name", "mlp")
        .arg("--max-batch-size", "64")
        .arg("--max-batch-delay-us", "400000")
        .arg("--max-concurrency", "2")
        .arg("--max-body-bytes", "4096")
        .ready()
        .await;
    let mut c = connect(&rt).await;

    // A message over KINFER_MAX_BODY_BYTES.
    let e = c.model_infer(mlp_grpc_request("mlp", 40)).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("exceeds the limit of 4096 bytes (KINFER_MAX_BODY_BYTES)"), "{e:?}");

    // Two calls in flight fill KINFER_MAX_CONCURRENCY; the third is refused at once.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = c.clone();
        held.push(tokio::spawn(async move { c.model_infer(mlp_grpc_request("mlp", 1)).await.map(|_| ()) }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t = std::time::Instant::now();
    let e = c.model_infer(mlp_grpc_request("mlp", 1)).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("KINFER_MAX_CONCURRENCY"), "{e:?}");
    assert!(t.elapsed() < Duration::from_millis(200), "refused at once");
    for h in held {
        h.await.unwrap().expect("the calls in flight finish");
    }

    // The request's own deadline: timeout_ms (as on REST) and Triton's timeout (µs).
    let mut r = mlp_grpc_request("mlp", 1);
    r.parameters.insert("timeout_ms".into(), int_param(50));
    let e = c.model_infer(r).await.unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
    assert!(e.message().contains("inference did not finish within 50 ms"), "{e:?}");
    let mut r = mlp_grpc_request("mlp", 1);
    r.parameters.insert("timeout".into(), int_param(60_000));
    let e = c.model_infer(r).await.unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
    assert!(e.message().contains("within 60 ms"), "{e:?}");

    // grpc-timeout, answered by the server itself.
    let (status, message) = raw_call_with_grpc_timeout(rt.grpc_port, &mlp_grpc_request("mlp", 1), "80m").await;
    assert_eq!(status, "4", "DEADLINE_EXCEEDED: {message}");
    assert!(
        message.contains("inference%20did%20not%20finish") || message.contains("inference did not finish"),
        "{message}"
    );
    let (status, message) = raw_call_with_grpc_timeout(rt.grpc_port, &mlp_grpc_request("mlp", 1), "soon").await;
    assert_eq!(status, "3", "INVALID_ARGUMENT: {message}");

    let m = rt.metrics().await;
    assert!(m.contains(r#"kinfer_requests_total{code="504",model="mlp",protocol="grpc",version="1"} 3"#), "{m}");
    assert!(m.contains(r#"kinfer_requests_total{code="429",model="mlp",protocol="grpc",version="1"} 1"#), "{m}");
    assert!(m.contains(r#"kinfer_requests_total{code="413",model="mlp",protocol="grpc",version="1"} 1"#), "{m}");
    assert!(m.contains("kinfer_requests_in_flight 0"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_grpc_calls_are_batched_like_rest() {
    let rt = runtime(model_path("mlp").display().to_string())
        .arg("--model-name", "mlp")
        .arg("--max-batch-size", "8")
        .arg("--max-batch-delay-us", "200000")
        .ready()
        .await;
    let c = connect(&rt).await;
    let mut calls = Vec::new();
    for rows in 1..=3 {
        let mut c = c.clone();
        calls.push(tokio::spawn(
            async move { c.model_infer(mlp_grpc_request("mlp", rows)).await.map(|r| r.into_inner()) },
        ));
    }
    for (i, call) in calls.into_iter().enumerate() {
        let resp = call.await.unwrap().expect("infer");
        assert_eq!(resp.outputs[0].shape, vec![i as i64 + 1, 1], "each call gets its own rows back");
    }
    let m = rt.metrics().await;
    let merged = m
        .lines()
        .find(|l| l.starts_with(r#"kinfer_batch_size_sum{model="mlp",version="1"}"#))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .expect("batch size sum");
    let runs = m
        .lines()
        .find(|l| l.starts_with(r#"kinfer_batch_size_count{model="mlp",version="1"}"#))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .expect("batch size count");
    // Warm-up does not count; 6 rows in fewer runs than calls means calls were merged.
    assert_eq!(merged, 6.0, "{m}");
    assert!(runs < 3.0, "expected merged runs, got {runs}: {m}");
}

#[tokio::test]
async fn loading_model_is_unavailable_and_health_not_serving_until_ready() {
    let url = slow_http(std::fs::read(model_path("iris")).unwrap(), Duration::from_millis(1500), "200 OK").await;
    let mut rt = runtime(url).arg("--shutdown-delay-seconds", "1").spawn();
    let mut c = loop {
        if let Ok(c) = GrpcInferenceServiceClient::connect(rt.grpc_url()).await {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut h = tonic_health::pb::health_client::HealthClient::new(channel(&rt).await);
    let serving = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
    let not_serving = tonic_health::pb::health_check_response::ServingStatus::NotServing as i32;
    let check = |service: &str| tonic_health::pb::HealthCheckRequest { service: service.into() };

    let mut watch = h.watch(check("")).await.expect("watch").into_inner();
    assert_eq!(watch.message().await.unwrap().unwrap().status, not_serving);
    assert!(c.server_live(pb::ServerLiveRequest {}).await.unwrap().into_inner().live);
    assert!(!c.server_ready(pb::ServerReadyRequest {}).await.unwrap().into_inner().ready);
    let ready = c.model_ready(pb::ModelReadyRequest { name: "iris".into(), version: String::new() }).await;
    assert!(!ready.expect("model ready answers").into_inner().ready);
    let mut r = mlp_grpc_request("iris", 1);
    r.inputs[0].shape = vec![1, 4];
    r.inputs[0].contents = Some(InferTensorContents { fp32_contents: vec![5.1, 3.5, 1.4, 0.2], ..Default::default() });
    let e = c.model_infer(r.clone()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("model 'iris' is still loading"), "{e:?}");
    assert_eq!(h.check(check("")).await.unwrap().into_inner().status, not_serving);
    assert_eq!(h.check(check("inference.GRPCInferenceService")).await.unwrap().into_inner().status, not_serving);

    rt.wait_ready(Duration::from_secs(20)).await;
    assert_eq!(h.check(check("")).await.unwrap().into_inner().status, serving);
    let next = tokio::time::timeout(Duration::from_secs(1), watch.message()).await;
    assert_eq!(next.expect("watch reports the change").unwrap().unwrap().status, serving);
    assert_eq!(h.check(check("inference.GRPCInferenceService")).await.unwrap().into_inner().status, serving);
    assert_eq!(h.check(check("no.such.Service")).await.unwrap_err().code(), Code::NotFound);
    let out = c.model_infer(r).await.expect("ready now").into_inner();
    assert_eq!(out.outputs[0].contents.as_ref().unwrap().int64_contents, vec![0], "setosa");

    // SIGTERM: NOT_SERVING while the drain delay keeps the port open.
    rt.sigterm();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.check(check("")).await.unwrap().into_inner().status, not_serving);
    assert!(!c.server_ready(pb::ServerReadyRequest {}).await.unwrap().into_inner().ready);
    let (code, _, _) = rt.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(code, 0);
}

#[tokio::test]
async fn reflection_lists_the_services() {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let rt = runtime(model_path("iris").display().to_string()).ready().await;
    let mut r = ServerReflectionClient::new(channel(&rt).await);
    let ask = |m: MessageRequest| ServerReflectionRequest { host: String::new(), message_request: Some(m) };
    let reqs = vec![
        ask(MessageRequest::ListServices(String::new())),
        ask(MessageRequest::FileContainingSymbol("inference.GRPCInferenceService".into())),
    ];
    let mut stream = r.server_reflection_info(futures::stream::iter(reqs)).await.unwrap().into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) = stream.message().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in ["inference.GRPCInferenceService", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"] {
        assert!(names.iter().any(|n| n == want), "{want} missing from {names:?}");
    }
    let Some(MessageResponse::FileDescriptorResponse(files)) =
        stream.message().await.unwrap().unwrap().message_response
    else {
        panic!("expected the proto file");
    };
    let file = prost_types::FileDescriptorProto::decode(files.file_descriptor_proto[0].as_slice()).unwrap();
    assert_eq!(file.name(), "grpc_predict_v2.proto");
    let methods: Vec<&str> = file.service[0].method.iter().map(|m| m.name()).collect();
    assert_eq!(
        methods,
        [
            "ServerLive",
            "ServerReady",
            "ModelReady",
            "ServerMetadata",
            "ModelMetadata",
            "ModelInfer",
            "RepositoryIndex",
            "RepositoryModelLoad",
            "RepositoryModelUnload"
        ]
    );

    // grpcurl and older tools ask v1alpha.
    use tonic_reflection::pb::v1alpha::{
        ServerReflectionRequest as Req, server_reflection_client::ServerReflectionClient as Alpha,
        server_reflection_request::MessageRequest as AlphaReq,
    };
    let mut a = Alpha::new(channel(&rt).await);
    let req = Req { host: String::new(), message_request: Some(AlphaReq::ListServices(String::new())) };
    let mut stream = a.server_reflection_info(futures::stream::iter(vec![req])).await.unwrap().into_inner();
    assert!(stream.message().await.unwrap().is_some());
}

#[tokio::test]
async fn grpc_port_zero_turns_grpc_off_and_rest_gets_the_compatibility_paths() {
    let mut rt = runtime(model_path("iris").display().to_string()).without_grpc().ready().await;
    let (s, v) = rt.get_json("/health").await;
    assert_eq!((s, v["live"].as_bool()), (200, Some(true)));
    let (s, v) = rt.get_json("/ready").await;
    assert_eq!((s, v["ready"].as_bool()), (200, Some(true)));
    let (s, v) = rt.get_json("/").await;
    assert_eq!(s, 200);
    assert_eq!(v["name"], "kinfer-runtime");
    assert_eq!(v["docs"], "/docs");
    assert_eq!(v["models"][0]["name"], "model");
    assert_eq!(v["models"][0]["infer"], "/v2/models/model/infer");
    let (_, doc) = rt.get_json("/openapi.json").await;
    for p in ["/", "/health", "/ready"] {
        assert!(doc["paths"][p]["get"].is_object(), "{p} missing from /openapi.json");
    }
    rt.sigterm();
    let (code, stdout, _) = rt.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(code, 0);
    assert!(!stdout.contains("gRPC listening"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_land_in_the_request_log() {
    let s3 = S3::start().await;
    s3.bucket("logs");
    let rt = s3
        .runtime(&model_path("mlp").display().to_string(), ACCESS_KEY, SECRET_KEY)
        .arg("--model-name", "mlp")
        .arg("--log-uri", "s3://logs/audit/")
        .arg("--log-flush-interval-ms", "200")
        .ready()
        .await;
    let mut c = connect(&rt).await;
    let mut ok = tonic::Request::new(mlp_grpc_request("mlp", 2));
    ok.metadata_mut().insert("x-request-id", "grpc-logged-1".parse().unwrap());
    c.model_infer(ok).await.expect("infer");
    let mut bad = mlp_grpc_request("mlp", 1);
    bad.inputs[0].shape = vec![1, 29];
    bad.id = "grpc-logged-2".into();
    c.model_infer(bad).await.unwrap_err();

    let (_, records) = wait_for_records(&s3.root.path().join("logs"), 2, Duration::from_secs(10)).await;
    let r = records.iter().find(|r| r["request_id"] == "grpc-logged-1").expect("record of the call");
    assert_eq!((r["protocol"].as_str(), r["status"].as_u64()), (Some("grpc"), Some(200)));
    assert_eq!(r["inputs"][0]["shape"], serde_json::json!([2, 30]));
    assert_eq!(r["outputs"][0]["shape"], serde_json::json!([2, 1]));
    let e = records.iter().find(|r| r["request_id"] == "grpc-logged-2").expect("record of the failed call");
    assert_eq!((e["protocol"].as_str(), e["status"].as_u64()), (Some("grpc"), Some(400)));
    assert!(e["error"].as_str().unwrap().contains("expected [-1, 30]"), "{e}");
}

/// The gRPC port announces HTTP/2 limits in its SETTINGS: streams per connection and the
/// header-list cap (a client opening more streams waits; rapid resets are capped in hyper).
#[tokio::test]
async fn http2_settings_limit_streams_per_connection() {
    let rt = runtime(model_path("iris").display().to_string()).arg("--model-name", "iris").ready().await;
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", rt.grpc_port)).await.expect("connect");
    let (client, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(conn);
    let mut client = client.ready().await.expect("h2 ready");
    // The server's SETTINGS arrive with the first exchange.
    let req = http::Request::post(format!("http://127.0.0.1:{}/grpc.health.v1.Health/Check", rt.grpc_port))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("request");
    let (resp, mut send) = client.send_request(req, false).expect("send");
    send.send_data(vec![0u8, 0, 0, 0, 0].into(), true).expect("data");
    let resp = resp.await.expect("response");
    assert_eq!(resp.status(), 200);
    assert_eq!(client.current_max_send_streams(), kinfer_runtime::listener::H2_MAX_STREAMS as usize);
}
