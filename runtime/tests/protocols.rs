//! The three protocols over real HTTP on 127.0.0.1, against the example models; answers are
//! compared with the outputs Python onnxruntime computed (examples/models/*/expected.json).

mod support;

use serde_json::{Value, json};
use support::*;

fn v2_request(exp: &Value, nested: bool) -> Value {
    let input = &exp["inputs"][0];
    let shape = input["shape"].as_array().unwrap();
    let data = if nested {
        let cols = shape[1].as_u64().unwrap() as usize;
        let flat = input["data"].as_array().unwrap();
        Value::Array(flat.chunks(cols).map(|c| Value::Array(c.to_vec())).collect())
    } else {
        input["data"].clone()
    };
    json!({"id": "req-42", "inputs": [{"name": input["name"], "shape": input["shape"], "datatype": input["datatype"], "data": data}]})
}

fn rows(exp: &Value) -> Vec<Value> {
    let input = &exp["inputs"][0];
    let cols = input["shape"][1].as_u64().unwrap() as usize;
    input["data"].as_array().unwrap().chunks(cols).map(|c| Value::Array(c.to_vec())).collect()
}

fn expected_output<'a>(exp: &'a Value, name: &str) -> &'a Value {
    exp["outputs"].as_array().unwrap().iter().find(|o| o["name"] == name).unwrap()
}

#[tokio::test]
async fn v2_infer_matches_onnxruntime_for_every_example_model() {
    for name in ["iris", "tabular", "mlp"] {
        let rt = runtime(model_path(name).display().to_string()).arg("--model-name", name).ready().await;
        let exp = expected(name);
        for nested in [false, true] {
            let (status, body, headers) =
                rt.post_json(&format!("/v2/models/{name}/infer"), &v2_request(&exp, nested)).await;
            assert_eq!(status, 200, "{name}: {body}");
            assert_eq!(body["id"], "req-42");
            assert_eq!(body["model_name"], name);
            assert_eq!(body["model_version"], "1");
            assert!(headers.contains_key("x-request-id"));
            let outs = body["outputs"].as_array().unwrap();
            assert_eq!(outs.len(), exp["outputs"].as_array().unwrap().len());
            for out in outs {
                let want = expected_output(&exp, out["name"].as_str().unwrap());
                assert_eq!(out["datatype"], want["datatype"], "{name}");
                assert_eq!(out["shape"], want["shape"], "{name}");
                assert_close(&out["data"], &want["data"], &format!("{name}.{}", out["name"]));
            }
        }
    }
}

#[tokio::test]
async fn v2_metadata_health_versions_and_output_subset() {
    let rt = runtime(model_path("tabular").display().to_string())
        .arg("--model-name", "fraud")
        .arg("--model-version", "3")
        .ready()
        .await;
    let (s, meta) = rt.get_json("/v2").await;
    assert_eq!(s, 200);
    assert_eq!(meta["name"], "kinfer-runtime");
    assert_eq!(rt.get_json("/v2/health/live").await.0, 200);
    assert_eq!(rt.get_json("/v2/health/ready").await.0, 200);
    assert_eq!(rt.get_json("/v2/models/fraud/ready").await.0, 200);
    assert_eq!(rt.get_json("/v2/models/fraud/versions/3/ready").await.0, 200);
    let (s, m) = rt.get_json("/v2/models/fraud").await;
    assert_eq!(s, 200);
    assert_eq!(m["versions"], json!(["3"]));
    assert_eq!(m["platform"], "onnxruntime_onnx");
    assert_eq!(m["inputs"], json!([{"name": "input", "datatype": "FP32", "shape": [-1, 30]}]));
    assert_eq!(m["outputs"][0], json!({"name": "label", "datatype": "BYTES", "shape": [-1]}));
    assert_eq!(m["outputs"][1], json!({"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]}));
    assert_eq!(rt.get_json("/v2/models/fraud/versions/3").await.0, 200);

    let exp = expected("tabular");
    let mut req = v2_request(&exp, false);
    req["outputs"] = json!([{"name": "label"}]);
    let (s, body, _) = rt.post_json("/v2/models/fraud/versions/3/infer", &req).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["outputs"].as_array().unwrap().len(), 1);
    assert_eq!(body["outputs"][0]["data"], expected_output(&exp, "label")["data"]);

    let (s, body, _) = rt.post_json("/v2/models/fraud/versions/2/infer", &req).await;
    assert_eq!(s, 404);
    assert_eq!(body["code"], "MODEL_NOT_FOUND");
    assert!(body["error"].as_str().unwrap().contains("version '2' not found"));
}

#[tokio::test]
async fn kserve_v1_and_predict_match_onnxruntime() {
    let rt = runtime(model_path("iris").display().to_string()).arg("--model-name", "iris").ready().await;
    let exp = expected("iris");
    let labels = &expected_output(&exp, "label")["data"];
    let probs = expected_output(&exp, "probabilities")["data"].as_array().unwrap().clone();

    let (s, v) = rt.get_json("/v1/models/iris").await;
    assert_eq!((s, v.clone()), (200, json!({"name": "iris", "ready": true})));
    let (s, body, _) = rt.post_json("/v1/models/iris:predict", &json!({"instances": rows(&exp)})).await;
    assert_eq!(s, 200, "{body}");
    let preds = body["predictions"].as_array().unwrap();
    assert_eq!(preds.len(), 6);
    for (i, p) in preds.iter().enumerate() {
        assert_eq!(p["label"], labels[i]);
        assert_close(&p["probabilities"], &Value::Array(probs[i * 3..i * 3 + 3].to_vec()), "v1 probabilities");
    }
    // Object rows name the input.
    let obj: Vec<Value> = rows(&exp).into_iter().map(|r| json!({"input": r})).collect();
    let (s, body2, _) = rt.post_json("/v1/models/iris:predict", &json!({"instances": obj})).await;
    assert_eq!(s, 200);
    assert_eq!(body2, body);

    let (s, body, _) = rt.post_json("/predict", &json!({"instances": rows(&exp)})).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["model_name"], "iris");
    let preds = body["predictions"].as_array().unwrap();
    for (i, p) in preds.iter().enumerate() {
        assert_eq!(p["label"], labels[i]);
        let got: Vec<Value> = ["0", "1", "2"].iter().map(|k| p["probabilities"][k].clone()).collect();
        assert_close(&Value::Array(got), &Value::Array(probs[i * 3..i * 3 + 3].to_vec()), "predict probabilities");
    }
}

#[tokio::test]
async fn predict_names_string_classes_and_applies_a_threshold() {
    let rt = runtime(model_path("tabular").display().to_string()).arg("--model-name", "fraud").ready().await;
    let exp = expected("tabular");
    let labels = &expected_output(&exp, "label")["data"];
    let probs = expected_output(&exp, "probabilities")["data"].as_array().unwrap().clone();
    let (s, body, _) = rt.post_json("/predict?threshold=0.5", &json!({"instances": rows(&exp)})).await;
    assert_eq!(s, 200, "{body}");
    for (i, p) in body["predictions"].as_array().unwrap().iter().enumerate() {
        assert_eq!(p["label"], labels[i]);
        // Columns follow the exporter's class order: ["fraud", "legit"].
        let fraud = probs[i * 2].as_f64().unwrap();
        let legit = probs[i * 2 + 1].as_f64().unwrap();
        assert!((p["probabilities"]["fraud"].as_f64().unwrap() - fraud).abs() < 1e-6);
        assert!((p["probabilities"]["legit"].as_f64().unwrap() - legit).abs() < 1e-6);
        assert!((p["score"].as_f64().unwrap() - legit).abs() < 1e-6);
        assert_eq!(p["decision"], legit >= 0.5);
    }
    let (s, body, _) = rt.post_json("/predict?threshold=2", &json!({"instances": rows(&exp)})).await;
    assert_eq!(s, 400);
    assert!(body["error"].as_str().unwrap().contains("threshold must be between 0 and 1"));
}

#[tokio::test]
async fn regression_outputs_on_every_protocol() {
    let rt = runtime(model_path("mlp").display().to_string()).ready().await;
    let exp = expected("mlp");
    let want = expected_output(&exp, "variable")["data"].as_array().unwrap().clone();
    let (s, body, _) = rt.post_json("/predict", &json!({"instances": rows(&exp)})).await;
    assert_eq!(s, 200, "{body}");
    let got: Vec<Value> = body["predictions"].as_array().unwrap().iter().map(|p| p["variable"].clone()).collect();
    assert_close(&Value::Array(got), &Value::Array(want.clone()), "predict");
    let (s, body, _) = rt.post_json("/v1/models/model:predict", &json!({"instances": rows(&exp)})).await;
    assert_eq!(s, 200, "{body}");
    let got: Vec<Value> = body["predictions"].as_array().unwrap().iter().map(|p| p[0].clone()).collect();
    assert_close(&Value::Array(got), &Value::Array(want), "v1");
}

#[tokio::test]
async fn every_error_is_json_with_code_message_and_request_id() {
    let rt = runtime(model_path("iris").display().to_string())
        .arg("--model-name", "iris")
        .arg("--max-body-bytes", "2048")
        .arg("--max-batch-rows", "4")
        .ready()
        .await;
    let good = json!({"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]});
    let with = |patch: Value| {
        let mut input = good.clone();
        for (k, v) in patch.as_object().unwrap() {
            input[k] = v.clone();
        }
        json!({"inputs": [input]})
    };
    let cases: Vec<(&str, Value, u16, &str, &str)> = vec![
        (
            "/v2/models/iris/infer",
            with(json!({"name": "features"})),
            400,
            "INVALID_REQUEST",
            "unknown input 'features'; the model's inputs are 'input'",
        ),
        (
            "/v2/models/iris/infer",
            with(json!({"shape": [1, 3], "data": [1, 2, 3]})),
            400,
            "INVALID_REQUEST",
            "input 'input' has shape [1, 3], expected [-1, 4]",
        ),
        (
            "/v2/models/iris/infer",
            with(json!({"datatype": "FP64"})),
            400,
            "INVALID_REQUEST",
            "input 'input' has datatype FP64, expected FP32",
        ),
        (
            "/v2/models/iris/infer",
            with(json!({"data": [1, 2, 3]})),
            400,
            "INVALID_REQUEST",
            "input 'input' has 3 elements but shape [1, 4] needs 4",
        ),
        (
            "/v2/models/iris/infer",
            with(json!({"data": [1, 2, "three", 4]})),
            400,
            "INVALID_REQUEST",
            "element 2 is the string \"three\", which is not a valid FP32 value",
        ),
        (
            "/v2/models/iris/infer",
            with(json!({"shape": [5, 4], "data": vec![1.0; 20]})),
            400,
            "INVALID_REQUEST",
            "batch of 5 rows exceeds the limit of 4 rows per request",
        ),
        (
            "/v2/models/flowers/infer",
            with(json!({})),
            404,
            "MODEL_NOT_FOUND",
            "model 'flowers' not found; this server serves 'iris'",
        ),
        (
            "/v1/models/flowers:predict",
            json!({"instances": [[1, 2, 3, 4]]}),
            404,
            "MODEL_NOT_FOUND",
            "model 'flowers' not found",
        ),
        (
            "/v1/models/iris:explain",
            json!({"instances": [[1, 2, 3, 4]]}),
            404,
            "MODEL_NOT_FOUND",
            "':explain' is not supported",
        ),
        (
            "/predict",
            json!({"instances": [[1, 2, 3, 4], [1, 2, 3]]}),
            400,
            "INVALID_REQUEST",
            "instances[1] has shape [3] but instances[0] has [4]",
        ),
        ("/predict", json!({"instances": [[1, 2, 3, null]]}), 400, "INVALID_REQUEST", "element 3 is null"),
        ("/predict", json!({"rows": [[1, 2, 3, 4]]}), 400, "INVALID_REQUEST", "missing field `instances`"),
    ];
    for (path, body, status, code, message) in cases {
        let (s, v, h) = rt.post_json(path, &body).await;
        assert_eq!(s, status, "{path} {body}: {v}");
        assert_eq!(v["code"], code, "{v}");
        assert!(v["error"].as_str().unwrap().contains(message), "{path}: {v} does not contain {message:?}");
        let rid = h.get("x-request-id").expect("x-request-id").to_str().unwrap();
        assert_eq!(v["request_id"], rid);
    }

    // Malformed JSON names the position.
    let (s, v, _) = rt.post_raw("/v2/models/iris/infer", "{\"inputs\": [").await;
    assert_eq!(s, 400);
    assert_eq!(v["code"], "INVALID_REQUEST");
    assert!(v["error"].as_str().unwrap().contains("line 1 column"), "{v}");

    // Body limit → 413.
    let big = format!("{{\"instances\": [[{}]]}}", vec!["1.0"; 1000].join(","));
    let (s, v, _) = rt.post_raw("/predict", big).await;
    assert_eq!(s, 413, "{v}");
    assert_eq!(v["code"], "PAYLOAD_TOO_LARGE");
    assert!(v["error"].as_str().unwrap().contains("2048 bytes"), "{v}");

    // Unknown route and wrong method are JSON too; a client's request id is echoed.
    let r = client().get(rt.url("/v3/nothing")).header("x-request-id", "client-id-7").send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["x-request-id"], "client-id-7");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["request_id"], "client-id-7");
    let r = client().get(rt.url("/predict")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["code"], "INVALID_REQUEST");

    // Successful responses carry a generated id.
    let (s, _, h) = rt.post_json("/predict", &json!({"instances": [[1, 2, 3, 4]]})).await;
    assert_eq!(s, 200);
    assert_eq!(h["x-request-id"].to_str().unwrap().len(), 36);
}

#[tokio::test]
async fn binary_tensor_extension_round_trips() {
    let rt = runtime(model_path("iris").display().to_string()).arg("--model-name", "iris").ready().await;
    let exp = expected("iris");
    let data: Vec<f32> =
        exp["inputs"][0]["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
    let header = json!({
        "inputs": [{"name": "input", "shape": [6, 4], "datatype": "FP32", "parameters": {"binary_data_size": data.len() * 4}}],
        "outputs": [{"name": "label", "parameters": {"binary_data": true}}, {"name": "probabilities", "parameters": {"binary_data": false}}]
    })
    .to_string();
    let mut body = header.clone().into_bytes();
    for x in &data {
        body.extend_from_slice(&x.to_le_bytes());
    }
    let r = client()
        .post(rt.url("/v2/models/iris/infer"))
        .header("Inference-Header-Content-Length", header.len().to_string())
        .header("content-type", "application/octet-stream")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let n: usize = r.headers()["inference-header-content-length"].to_str().unwrap().parse().unwrap();
    let bytes = r.bytes().await.unwrap();
    let json: Value = serde_json::from_slice(&bytes[..n]).unwrap();
    assert_eq!(json["outputs"][0]["parameters"]["binary_data_size"], 48);
    let labels: Vec<i64> = bytes[n..].chunks(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect();
    let want: Vec<i64> =
        expected_output(&exp, "label")["data"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
    assert_eq!(labels, want);
    assert_close(
        &json["outputs"][1]["data"],
        &expected_output(&exp, "probabilities")["data"],
        "json output beside binary",
    );
}

#[tokio::test]
async fn metrics_count_requests_by_model_protocol_and_code() {
    let rt = runtime(model_path("iris").display().to_string()).arg("--model-name", "iris").ready().await;
    let row = json!({"instances": [[5.1, 3.5, 1.4, 0.2]]});
    rt.post_json("/predict", &row).await;
    rt.post_json("/v1/models/iris:predict", &row).await;
    rt.post_json("/v1/models/iris:predict", &json!({"instances": [[1]]})).await;
    let m = rt.metrics().await;
    for line in [
        r#"kinfer_requests_total{code="200",model="iris",protocol="predict",version="1"} 1"#,
        r#"kinfer_requests_total{code="200",model="iris",protocol="v1",version="1"} 1"#,
        r#"kinfer_requests_total{code="400",model="iris",protocol="v1",version="1"} 1"#,
        r#"kinfer_model_ready{model="iris",version="1"} 1"#,
        "kinfer_requests_in_flight 0",
        r#"kinfer_inference_duration_seconds_count{model="iris",version="1"}"#,
        r#"kinfer_request_duration_seconds_bucket{model="iris",protocol="predict",version="1",le="+Inf"} 1"#,
        "kinfer_model_load_duration_seconds",
    ] {
        assert!(m.contains(line), "metrics lack {line:?}:\n{m}");
    }
}
