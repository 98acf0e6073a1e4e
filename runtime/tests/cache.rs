//! The prediction cache over real HTTP and gRPC (the spawned binary on 127.0.0.1): hit, miss and
//! bypass on every protocol sharing one entry for the same rows, eviction by entries and by bytes,
//! TTL expiry, output sets kept apart, single flight, and the metrics that show it.

mod support;

use std::time::Duration;

use kinfer_runtime::protocol::grpc::pb::{
    self, InferParameter, InferTensorContents, grpc_inference_service_client::GrpcInferenceServiceClient,
    infer_parameter::ParameterChoice, model_infer_request::InferInputTensor,
};
use serde_json::{Value, json};
use support::*;

/// Two iris rows whose values are exact in FP32 (JSON and binary carry the same bits).
const ROWS: [[f32; 4]; 2] = [[5.0, 3.5, 1.5, 0.25], [6.5, 3.0, 5.5, 2.0]];

fn rows(shift: f32) -> Vec<Vec<f32>> {
    ROWS.iter().map(|r| r.iter().map(|v| v + shift).collect()).collect()
}

fn v2_body(rows: &[Vec<f32>], params: Value) -> Value {
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    json!({
        "inputs": [{"name": "input", "shape": [rows.len(), 4], "datatype": "FP32", "data": flat}],
        "parameters": params,
    })
}

/// The sum of the samples of `name` whose labels include every `labels` pair.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter(|l| labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn cache_header(h: &reqwest::header::HeaderMap) -> &str {
    h.get("x-kinfer-cache").and_then(|v| v.to_str().ok()).unwrap_or("<none>")
}

const IRIS: [(&str, &str); 2] = [("model", "iris"), ("version", "1")];

fn iris() -> RuntimeBuilder {
    runtime(model_path("iris").display().to_string()).arg("--model-name", "iris")
}

async fn v2(rt: &Runtime, body: &Value) -> (u16, Value, String) {
    let (status, v, h) = rt.post_json("/v2/models/iris/infer", body).await;
    (status, v, cache_header(&h).to_string())
}

async fn v2_binary(rt: &Runtime, rows: &[Vec<f32>]) -> (u16, Value, String) {
    let header = json!({
        "inputs": [{"name": "input", "shape": [rows.len(), 4], "datatype": "FP32",
                    "parameters": {"binary_data_size": rows.len() * 16}}],
    })
    .to_string();
    let mut body = header.clone().into_bytes();
    for v in rows.iter().flatten() {
        body.extend_from_slice(&v.to_le_bytes());
    }
    let r = client()
        .post(rt.url("/v2/models/iris/infer"))
        .header("inference-header-content-length", header.len())
        .header("content-type", "application/octet-stream")
        .body(body)
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    let cache = cache_header(r.headers()).to_string();
    (status, r.json().await.expect("JSON answer"), cache)
}

async fn post(rt: &Runtime, path: &str, body: &Value) -> (u16, Value, String) {
    let (status, v, h) = rt.post_json(path, body).await;
    (status, v, cache_header(&h).to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_rows_hit_one_entry_from_every_rest_protocol_with_the_same_outputs() {
    let rt = iris().env("KINFER_CACHE_MAX_ENTRIES", "100").ready().await;
    let r = rows(0.0);
    let instances = json!({ "instances": r });

    let (s, miss, c) = v2(&rt, &v2_body(&r, json!({}))).await;
    assert_eq!((s, c.as_str()), (200, "miss"), "{miss}");
    let (s, hit, c) = v2(&rt, &v2_body(&r, json!({}))).await;
    assert_eq!((s, c.as_str()), (200, "hit"));
    assert_eq!(hit, miss, "a hit answers what the miss did");
    let (s, bin, c) = v2_binary(&rt, &r).await;
    assert_eq!((s, c.as_str()), (200, "hit"), "v2 binary carries the same rows");
    assert_eq!(bin, miss);
    let (s, bypass, c) = v2(&rt, &v2_body(&r, json!({"cache": false}))).await;
    assert_eq!((s, c.as_str()), (200, "bypass"));
    assert_eq!(bypass, miss);

    let (s, v1_hit, c) = post(&rt, "/v1/models/iris:predict", &instances).await;
    assert_eq!((s, c.as_str()), (200, "hit"), "V1 shares the v2 entry");
    let (s, v1_bypass, c) = post(&rt, "/v1/models/iris:predict?cache=false", &instances).await;
    assert_eq!((s, c.as_str()), (200, "bypass"));
    assert_eq!(v1_hit, v1_bypass);

    let (s, mut p_hit, c) = post(&rt, "/predict", &instances).await;
    assert_eq!((s, c.as_str(), &p_hit["cached"]), (200, "hit", &json!(true)));
    let (s, mut p_bypass, c) = post(&rt, "/predict?cache=false", &instances).await;
    assert_eq!((s, c.as_str(), &p_bypass["cached"]), (200, "bypass", &json!(false)));
    p_hit.as_object_mut().unwrap().remove("cached");
    p_bypass.as_object_mut().unwrap().remove("cached");
    assert_eq!(p_hit, p_bypass);
    let (s, p_miss, c) = post(&rt, "/predict", &json!({ "instances": rows(1.0) })).await;
    assert_eq!((s, c.as_str(), &p_miss["cached"]), (200, "miss", &json!(false)));

    let m = rt.metrics().await;
    assert_eq!(metric(&m, "kinfer_cache_entries", &IRIS), 2.0, "one entry for the first rows, one for the new ones");
    assert_eq!(metric(&m, "kinfer_cache_hits_total", &IRIS), 4.0);
    assert_eq!(metric(&m, "kinfer_cache_misses_total", &IRIS), 2.0);
    assert_eq!(metric(&m, "kinfer_cache_bypasses_total", &IRIS), 3.0);
    assert!(metric(&m, "kinfer_cache_bytes", &IRIS) > 0.0);
    // The model ran for the two misses and the three bypasses only (warm-up runs outside).
    assert_eq!(metric(&m, "kinfer_batch_size_count", &[("model", "iris")]), 5.0);
    // Hits are requests like any other.
    assert_eq!(metric(&m, "kinfer_requests_total", &[("protocol", "v2"), ("code", "200")]), 4.0);
    assert_eq!(metric(&m, "kinfer_requests_total", &[("protocol", "v1"), ("code", "200")]), 2.0);
    assert_eq!(metric(&m, "kinfer_requests_total", &[("protocol", "predict"), ("code", "200")]), 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bypass_values_are_refused_naming_the_parameter_and_off_means_no_header() {
    let rt = iris().env("KINFER_CACHE_MAX_ENTRIES", "10").ready().await;
    let r = rows(0.0);
    let (s, v, _) = v2(&rt, &v2_body(&r, json!({"cache": "no"}))).await;
    assert_eq!(s, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("parameters.cache must be true or false"), "{v}");
    for path in ["/v1/models/iris:predict?cache=maybe", "/predict?cache=0"] {
        let (s, v, _) = post(&rt, path, &json!({ "instances": r })).await;
        assert_eq!(s, 400, "{path}: {v}");
        assert!(v["error"].as_str().unwrap().contains("query parameter 'cache' must be true or false"), "{v}");
    }
    drop(rt);

    // Off (no maximum set; a TTL alone does not turn it on): no header, no `cached`.
    let rt = iris().env("KINFER_CACHE_TTL_SECONDS", "60").ready().await;
    let (s, _, c) = v2(&rt, &v2_body(&r, json!({}))).await;
    assert_eq!((s, c.as_str()), (200, "<none>"));
    let (s, p, c) = post(&rt, "/predict", &json!({ "instances": r })).await;
    assert_eq!((s, c.as_str(), p.get("cached")), (200, "<none>", None));
    assert!(!rt.metrics().await.contains("kinfer_cache_hits_total"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_different_output_set_never_hits_the_others_entry() {
    let rt = iris().env("KINFER_CACHE_MAX_ENTRIES", "10").ready().await;
    let r = rows(0.0);
    let mut label_only = v2_body(&r, json!({}));
    label_only["outputs"] = json!([{"name": "label"}]);
    let mut both_reordered = v2_body(&r, json!({}));
    both_reordered["outputs"] = json!([{"name": "probabilities"}, {"name": "label"}]);

    assert_eq!(v2(&rt, &v2_body(&r, json!({}))).await.2, "miss");
    let (_, label, c) = v2(&rt, &label_only).await;
    assert_eq!(c, "miss", "asking for fewer outputs is another entry");
    assert_eq!(label["outputs"].as_array().unwrap().len(), 1);
    assert_eq!(v2(&rt, &label_only).await.2, "hit");
    // The same set in another order is the same entry, answered in the order asked.
    let (_, reordered, c) = v2(&rt, &both_reordered).await;
    assert_eq!(c, "hit");
    assert_eq!(reordered["outputs"][0]["name"], "probabilities");
    let m = rt.metrics().await;
    assert_eq!(metric(&m, "kinfer_cache_entries", &IRIS), 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_by_entries_and_by_bytes_moves_the_metrics() {
    let rt = iris().env("KINFER_CACHE_MAX_ENTRIES", "2").ready().await;
    for shift in [0.0, 1.0, 2.0] {
        assert_eq!(v2(&rt, &v2_body(&rows(shift), json!({}))).await.2, "miss");
    }
    let m = rt.metrics().await;
    assert_eq!(metric(&m, "kinfer_cache_entries", &IRIS), 2.0);
    assert_eq!(metric(&m, "kinfer_cache_evictions_total", &[("model", "iris"), ("reason", "max_entries")]), 1.0);
    let entry = metric(&m, "kinfer_cache_bytes", &IRIS) / 2.0;
    assert!(entry > 100.0, "an entry counts its key, outputs and overhead: {entry}");
    assert_eq!(v2(&rt, &v2_body(&rows(0.0), json!({}))).await.2, "miss", "the least recently used went first");
    assert_eq!(v2(&rt, &v2_body(&rows(2.0), json!({}))).await.2, "hit");
    drop(rt);

    // Room for two and a half entries of this size.
    let max = (entry * 2.5) as u64;
    let rt = iris().env("KINFER_CACHE_MAX_BYTES", max.to_string()).ready().await;
    for shift in [0.0, 1.0] {
        assert_eq!(v2(&rt, &v2_body(&rows(shift), json!({}))).await.2, "miss");
    }
    assert_eq!(v2(&rt, &v2_body(&rows(0.0), json!({}))).await.2, "hit"); // 0 is now the most recent
    assert_eq!(v2(&rt, &v2_body(&rows(2.0), json!({}))).await.2, "miss");
    let m = rt.metrics().await;
    assert_eq!(metric(&m, "kinfer_cache_evictions_total", &[("model", "iris"), ("reason", "max_bytes")]), 1.0);
    assert_eq!(metric(&m, "kinfer_cache_entries", &IRIS), 2.0);
    assert!(metric(&m, "kinfer_cache_bytes", &IRIS) <= max as f64);
    assert_eq!(v2(&rt, &v2_body(&rows(0.0), json!({}))).await.2, "hit");
    assert_eq!(v2(&rt, &v2_body(&rows(1.0), json!({}))).await.2, "miss");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_expire_after_the_ttl() {
    let rt = iris().env("KINFER_CACHE_MAX_ENTRIES", "10").env("KINFER_CACHE_TTL_SECONDS", "1").ready().await;
    let body = v2_body(&rows(0.0), json!({}));
    assert_eq!(v2(&rt, &body).await.2, "miss");
    assert_eq!(v2(&rt, &body).await.2, "hit");
    // The sweep runs every second: wait until it has removed the entry (bounded).
    let mut m = String::new();
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        m = rt.metrics().await;
        if metric(&m, "kinfer_cache_entries", &IRIS) == 0.0 {
            break;
        }
    }
    assert_eq!(metric(&m, "kinfer_cache_entries", &IRIS), 0.0, "{m}");
    assert_eq!(metric(&m, "kinfer_cache_bytes", &IRIS), 0.0);
    assert_eq!(metric(&m, "kinfer_cache_evictions_total", &[("model", "iris"), ("reason", "ttl")]), 1.0);
    assert_eq!(v2(&rt, &body).await.2, "miss");
}

fn grpc_request(rows: &[Vec<f32>], cache: Option<ParameterChoice>) -> pb::ModelInferRequest {
    let mut r = pb::ModelInferRequest {
        model_name: "iris".into(),
        inputs: vec![InferInputTensor {
            name: "input".into(),
            datatype: "FP32".into(),
            shape: vec![rows.len() as i64, 4],
            parameters: Default::default(),
            contents: Some(InferTensorContents { fp32_contents: rows.concat(), ..Default::default() }),
        }],
        ..Default::default()
    };
    if let Some(c) = cache {
        r.parameters.insert("cache".into(), InferParameter { parameter_choice: Some(c) });
    }
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_hits_the_entry_rest_stored_and_says_so() {
    let rt = iris().env("KINFER_CACHE_MAX_ENTRIES", "10").ready().await;
    let mut client = GrpcInferenceServiceClient::connect(rt.grpc_url()).await.expect("connect");
    let r = rows(0.0);
    let cache_of = |resp: &tonic::Response<pb::ModelInferResponse>| {
        let meta = resp.metadata().get("x-kinfer-cache").and_then(|v| v.to_str().ok()).map(str::to_string);
        let param = match resp.get_ref().parameters.get("cache").and_then(|p| p.parameter_choice.clone()) {
            Some(ParameterChoice::StringParam(s)) => Some(s),
            _ => None,
        };
        assert_eq!(meta, param, "metadata and response parameter agree");
        meta.unwrap_or_default()
    };

    let miss = client.model_infer(grpc_request(&r, None)).await.expect("infer");
    assert_eq!(cache_of(&miss), "miss");
    let hit = client.model_infer(grpc_request(&r, None)).await.expect("infer");
    assert_eq!(cache_of(&hit), "hit");
    assert_eq!(hit.get_ref().outputs, miss.get_ref().outputs);
    assert_eq!(hit.get_ref().raw_output_contents, miss.get_ref().raw_output_contents);
    let bypass = client.model_infer(grpc_request(&r, Some(ParameterChoice::BoolParam(false)))).await.expect("infer");
    assert_eq!(cache_of(&bypass), "bypass");
    assert_eq!(bypass.get_ref().outputs, miss.get_ref().outputs);
    // REST finds the entry gRPC stored.
    assert_eq!(v2(&rt, &v2_body(&r, json!({}))).await.2, "hit");

    let err = client
        .model_infer(grpc_request(&r, Some(ParameterChoice::StringParam("false".into()))))
        .await
        .expect_err("a string is refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("parameters.cache must be a bool_param"), "{}", err.message());
    let m = rt.metrics().await;
    assert_eq!(metric(&m, "kinfer_cache_hits_total", &IRIS), 2.0);
    assert_eq!(metric(&m, "kinfer_requests_total", &[("protocol", "grpc"), ("code", "200")]), 3.0);
}

/// A runtime whose inference threads wait 400 ms for a batch to fill: identical requests sent
/// together would merge into one run of many rows without single flight.
async fn slow_batching_runtime() -> Runtime {
    iris()
        .env("KINFER_CACHE_MAX_ENTRIES", "10")
        .env("KINFER_SESSIONS", "1")
        .env("KINFER_MAX_BATCH_SIZE", "64")
        .env("KINFER_MAX_BATCH_DELAY_US", "400000")
        .ready()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_identical_requests_run_the_model_once() {
    let rt = slow_batching_runtime().await;
    let one_row = vec![ROWS[0].to_vec()];
    let before = rt.metrics().await;
    let body = v2_body(&one_row, json!({}));
    let answers = futures::future::join_all((0..12).map(|_| v2(&rt, &body))).await;
    let first = &answers[0].1;
    let mut statuses: Vec<&str> = answers
        .iter()
        .map(|(s, v, c)| {
            assert_eq!((*s, v), (200, first));
            c.as_str()
        })
        .collect();
    statuses.sort_unstable();
    assert_eq!(statuses.iter().filter(|c| **c == "miss").count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|c| **c == "hit").count(), 11, "{statuses:?}");
    let m = rt.metrics().await;
    let runs = metric(&m, "kinfer_batch_size_count", &[("model", "iris")])
        - metric(&before, "kinfer_batch_size_count", &[("model", "iris")]);
    let rows_run = metric(&m, "kinfer_batch_size_sum", &[("model", "iris")])
        - metric(&before, "kinfer_batch_size_sum", &[("model", "iris")]);
    assert_eq!((runs, rows_run), (1.0, 1.0), "one session run of one row for 12 identical requests");
    assert_eq!(metric(&m, "kinfer_requests_total", &[("protocol", "v2"), ("code", "200")]), 12.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_leader_gives_up_a_follower_runs_the_model() {
    let rt = slow_batching_runtime().await;
    let one_row = vec![ROWS[1].to_vec()];
    // The leader's own deadline (100 ms) passes while its run waits for the batch to fill.
    let (leader_body, body) = (v2_body(&one_row, json!({"timeout_ms": 100})), v2_body(&one_row, json!({})));
    let leader = v2(&rt, &leader_body);
    let followers = async {
        tokio::time::sleep(Duration::from_millis(30)).await;
        futures::future::join_all((0..4).map(|_| v2(&rt, &body))).await
    };
    let ((s, v, _), followers) = tokio::join!(leader, followers);
    assert_eq!(s, 504, "{v}");
    let mut statuses: Vec<&str> = followers
        .iter()
        .map(|(s, v, c)| {
            assert_eq!(*s, 200, "{v}");
            assert_eq!(v, &followers[0].1);
            c.as_str()
        })
        .collect();
    statuses.sort_unstable();
    // One follower took over (miss) and the others had its result, whoever arrived first.
    assert_eq!(statuses, ["hit", "hit", "hit", "miss"]);
    let m = rt.metrics().await;
    assert_eq!(metric(&m, "kinfer_cache_entries", &IRIS), 1.0);
}
