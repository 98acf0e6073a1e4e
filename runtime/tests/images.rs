//! Image inputs over real HTTP on 127.0.0.1, against the example orientation model (a real
//! image classifier shipped in a PyPI wheel): multipart `/predict` and base64 `BYTES` on v2 are
//! compared with what Python onnxruntime computed with Pillow's preprocessing
//! (examples/models/orientation/expected.json, made by examples/make_image_examples.py).
//!
//! Pillow's and the `image` crate's bilinear resizing are not bit-identical, so labels are
//! compared exactly and probabilities within the tolerance written in expected.json.

mod support;

use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use support::*;

const DIR: &str = "examples/models/orientation";

fn image_bytes(file: &str) -> Vec<u8> {
    std::fs::read(repo().join(DIR).join("images").join(file)).expect("example image")
}

fn labels_path() -> String {
    repo().join(DIR).join("labels.txt").display().to_string()
}

async fn orientation(top_k: Option<usize>) -> Runtime {
    let exp = expected("orientation");
    let mut b = runtime(model_path("orientation").display().to_string())
        .arg("--model-name", "orientation")
        .env("KINFER_IMAGE_PREPROCESS", exp["preprocess"].as_str().expect("preprocess"))
        .env("KINFER_LABELS_FILE", labels_path());
    if let Some(k) = top_k {
        b = b.env("KINFER_TOP_K", k.to_string());
    }
    b.ready().await
}

/// A multipart/form-data body: (field name, file name, bytes) per part.
fn multipart(parts: &[(&str, Option<&str>, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "kinfer-test-boundary-7d3f";
    let mut body = Vec::new();
    for (field, file, bytes) in parts {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        match file {
            Some(f) => body.extend_from_slice(
                format!(
                    "Content-Disposition: form-data; name=\"{field}\"; filename=\"{f}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
                )
                .as_bytes(),
            ),
            None => body
                .extend_from_slice(format!("Content-Disposition: form-data; name=\"{field}\"\r\n\r\n").as_bytes()),
        }
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

async fn post_multipart(rt: &Runtime, parts: &[(&str, Option<&str>, &[u8])]) -> (u16, Value) {
    let (ct, body) = multipart(parts);
    let r = client().post(rt.url("/predict")).header("content-type", ct).body(body).send().await.expect("request");
    let status = r.status().as_u16();
    let bytes = r.bytes().await.expect("body");
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| panic!("non-JSON body ({status}): {}", String::from_utf8_lossy(&bytes)));
    (status, v)
}

fn assert_probs(got: &[f64], want: &Value, tol: f64, what: &str) {
    let want: Vec<f64> = want.as_array().expect("probabilities").iter().map(|v| v.as_f64().expect("number")).collect();
    assert_eq!(got.len(), want.len(), "{what}");
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() <= tol, "{what}: got {got:?}, want {want:?} (tolerance {tol})");
    }
}

#[tokio::test]
async fn multipart_predict_names_the_orientation_of_every_image() {
    let exp = expected("orientation");
    let tol = exp["tolerance"].as_f64().expect("tolerance");
    let rt = orientation(Some(2)).await;
    let images = exp["images"].as_array().expect("images");
    let files: Vec<(String, Vec<u8>)> = images
        .iter()
        .map(|i| {
            let f = i["file"].as_str().expect("file").to_string();
            let b = image_bytes(&f);
            (f, b)
        })
        .collect();
    let parts: Vec<(&str, Option<&str>, &[u8])> =
        files.iter().map(|(f, b)| ("file", Some(f.as_str()), b.as_slice())).collect();
    let (status, body) = post_multipart(&rt, &parts).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["model_name"], "orientation");
    let preds = body["predictions"].as_array().expect("predictions");
    assert_eq!(preds.len(), images.len(), "one prediction per uploaded file, in order");
    for (p, want) in preds.iter().zip(images) {
        let file = want["file"].as_str().expect("file");
        assert_eq!(p["file"], file);
        assert_eq!(p["label"], want["label"], "{file}: {p}");
        let top = p["top_k"].as_array().expect("top_k");
        assert_eq!(top.len(), 2);
        assert_eq!(top[0]["label"], want["label"]);
        assert_eq!(p["confidence"], top[0]["confidence"]);
        // Back to index order for the comparison with onnxruntime's probabilities.
        let mut by_index = [0.0f64; 2];
        for t in top {
            by_index[t["index"].as_u64().expect("index") as usize] = t["confidence"].as_f64().expect("confidence");
        }
        assert_probs(&by_index, &want["probabilities"], tol, file);
    }

    // The field may also be called "image"; top-k defaults to every class when k > classes.
    let (status, body) = post_multipart(&rt, &[("image", Some("u.png"), &image_bytes("upright.png"))]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["predictions"][0]["label"], "upright");
}

#[tokio::test]
async fn v2_base64_bytes_input_matches_onnxruntime() {
    let exp = expected("orientation");
    let tol = exp["tolerance"].as_f64().expect("tolerance");
    let rt = orientation(None).await;
    let images = exp["images"].as_array().expect("images");
    let data: Vec<String> = images
        .iter()
        .map(|i| base64::engine::general_purpose::STANDARD.encode(image_bytes(i["file"].as_str().expect("file"))))
        .collect();
    let req =
        json!({"id": "img-1", "inputs": [{"name": "x", "datatype": "BYTES", "shape": [data.len()], "data": data}]});
    let (status, body, _) = rt.post_json("/v2/models/orientation/infer", &req).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], "img-1");
    let out = &body["outputs"][0];
    assert_eq!(out["name"], exp["output"]);
    assert_eq!(out["shape"], json!([images.len(), 2]));
    let flat: Vec<f64> = out["data"].as_array().expect("data").iter().map(|v| v.as_f64().expect("number")).collect();
    for (i, want) in images.iter().enumerate() {
        assert_probs(&flat[i * 2..i * 2 + 2], &want["probabilities"], tol, want["file"].as_str().unwrap_or("?"));
    }
    // The FP32 tensor itself is still accepted on v2.
    let zeros = vec![0.0f32; 3 * 48 * 192];
    let req = json!({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3, 48, 192], "data": zeros}]});
    let (status, body, _) = rt.post_json("/v2/models/orientation/infer", &req).await;
    assert_eq!(status, 200, "{body}");
}

fn assert_invalid(status: u16, body: &Value, needle: &str) {
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "INVALID_REQUEST", "{body}");
    assert!(body["request_id"].as_str().is_some_and(|s| !s.is_empty()), "{body}");
    let msg = body["error"].as_str().expect("error message");
    assert!(msg.contains(needle), "expected {needle:?} in {msg:?}");
}

/// A PNG header claiming 60000 x 60000 pixels (3.6 gigapixels) in under 100 bytes.
fn bomb_png() -> Vec<u8> {
    fn crc32(data: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFFu32;
        for b in data {
            crc ^= u32::from(*b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
            }
        }
        !crc
    }
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    for (kind, data) in [
        (&b"IHDR"[..], [&60_000u32.to_be_bytes()[..], &60_000u32.to_be_bytes()[..], &[8, 0, 0, 0, 0][..]].concat()),
        (&b"IDAT"[..], vec![0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]),
        (&b"IEND"[..], vec![]),
    ] {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let c = [kind, &data[..]].concat();
        out.extend_from_slice(&c);
        out.extend_from_slice(&crc32(&c).to_be_bytes());
    }
    out
}

#[tokio::test]
async fn bad_images_get_the_json_error_naming_the_accepted_types() {
    let rt = orientation(None).await;
    let gif = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;";
    let (s, b) = post_multipart(&rt, &[("file", Some("pic.gif"), gif)]).await;
    assert_invalid(s, &b, "image 0 (pic.gif): a GIF image is not a supported image; expected a JPEG or PNG image");
    let mut corrupt = image_bytes("upright.png");
    corrupt.truncate(60);
    let (s, b) = post_multipart(
        &rt,
        &[("file", Some("ok.png"), &image_bytes("upright.png")), ("file", Some("bad.png"), &corrupt)],
    )
    .await;
    assert_invalid(s, &b, "image 1 (bad.png): corrupt or unsupported Png image");
    let (s, b) = post_multipart(&rt, &[("file", Some("bomb.png"), &bomb_png())]).await;
    assert_invalid(s, &b, "over the limit of 40 megapixels");
    let (s, b) = post_multipart(&rt, &[("comment", None, b"hello")]).await;
    assert_invalid(s, &b, "unexpected form field 'comment'");
    let (s, b) = post_multipart(&rt, &[]).await;
    assert_invalid(s, &b, "the multipart body has no image");

    // v2: bad base64, a non-image, wrong shape.
    let req = json!({"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "data": ["%%%not base64"]}]});
    let (s, b, _) = rt.post_json("/v2/models/orientation/infer", &req).await;
    assert_invalid(s, &b, "not valid base64");
    let text = base64::engine::general_purpose::STANDARD.encode(b"{\"hello\": 1}");
    let req = json!({"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "data": [text]}]});
    let (s, b, _) = rt.post_json("/v2/models/orientation/infer", &req).await;
    assert_invalid(s, &b, "a text document is not a supported image; expected a JPEG or PNG image");
    let bomb = base64::engine::general_purpose::STANDARD.encode(bomb_png());
    let req = json!({"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "data": [bomb]}]});
    let (s, b, _) = rt.post_json("/v2/models/orientation/infer", &req).await;
    assert_invalid(s, &b, "60000x60000");
    let req = json!({"inputs": [{"name": "x", "datatype": "BYTES", "shape": [2], "data": ["aGVsbG8="]}]});
    let (s, b, _) = rt.post_json("/v2/models/orientation/infer", &req).await;
    assert_invalid(s, &b, "one base64 image per element");

    // The server is still healthy afterwards.
    let (s, _) = post_multipart(&rt, &[("file", Some("u.jpg"), &image_bytes("upright.jpg"))]).await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn too_many_images_are_refused_with_the_row_limit() {
    let exp = expected("orientation");
    let rt = runtime(model_path("orientation").display().to_string())
        .arg("--model-name", "orientation")
        .env("KINFER_IMAGE_PREPROCESS", exp["preprocess"].as_str().expect("preprocess"))
        .env("KINFER_MAX_BATCH_ROWS", "2")
        .ready()
        .await;
    let img = image_bytes("upright.png");
    let (s, b) =
        post_multipart(&rt, &[("file", Some("a"), &img), ("file", Some("b"), &img), ("file", Some("c"), &img)]).await;
    assert_invalid(s, &b, "exceeds the limit of 2 rows");
    // Without a labels file the classes are named by index.
    let (s, b) = post_multipart(&rt, &[("file", Some("a"), &img)]).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["predictions"][0]["label"], 0);
}

#[tokio::test]
async fn labels_file_names_the_classes_of_a_tabular_classifier() {
    let dir = tempfile::tempdir().expect("tempdir");
    let labels = dir.path().join("labels.txt");
    std::fs::write(&labels, "setosa\nversicolor\nvirginica\n").expect("write labels");
    let rt = runtime(model_path("iris").display().to_string())
        .arg("--model-name", "iris")
        .arg("--labels-file", labels.display().to_string())
        .arg("--top-k", "1")
        .ready()
        .await;
    let exp = expected("iris");
    let row: Vec<Value> = exp["inputs"][0]["data"].as_array().expect("data")[..4].to_vec();
    let (s, b, _) = rt.post_json("/predict", &json!({"instances": [row]})).await;
    assert_eq!(s, 200, "{b}");
    let p = &b["predictions"][0];
    assert!(["setosa", "versicolor", "virginica"].contains(&p["label"].as_str().unwrap_or("")), "{b}");
    assert_eq!(p["top_k"].as_array().map(Vec::len), Some(1));
    // Multipart on a model without image inputs is refused in the JSON error shape.
    let (s, b) = post_multipart(&rt, &[("file", Some("a.png"), &image_bytes("upright.png"))]).await;
    assert_invalid(s, &b, "not served with image inputs");
}

#[tokio::test]
async fn bad_image_settings_stop_the_start_with_a_clear_message() {
    let cases = [
        ("KINFER_IMAGE_PREPROCESS", "resize=48x192,colour=rgb".to_string(), "unknown key 'colour'"),
        ("KINFER_IMAGE_PREPROCESS", "layout=nchw".to_string(), "dynamic height or width; set resize"),
        ("KINFER_LABELS_FILE", "/nonexistent/labels.txt".to_string(), "cannot read /nonexistent/labels.txt"),
    ];
    for (k, v, needle) in cases {
        let mut rt = runtime(model_path("orientation").display().to_string()).env(k, v).spawn();
        let (code, out, err) = rt.wait_exit(Duration::from_secs(30)).await;
        assert_eq!(code, 1, "{out}\n{err}");
        assert!(err.contains(needle), "expected {needle:?} in:\n{err}");
    }
    // Three names for a model with two classes.
    let dir = tempfile::tempdir().expect("tempdir");
    let labels = dir.path().join("labels.txt");
    std::fs::write(&labels, "a\nb\nc\n").expect("write labels");
    let mut rt = runtime(model_path("orientation").display().to_string())
        .env("KINFER_IMAGE_PREPROCESS", "resize=48x192")
        .env("KINFER_LABELS_FILE", labels.display().to_string())
        .spawn();
    let (code, _, err) = rt.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(code, 1);
    assert!(err.contains("3 class names but output"), "{err}");
}

#[tokio::test]
async fn top_k_zero_answers_with_the_raw_outputs() {
    let exp = expected("orientation");
    let rt = orientation(Some(0)).await;
    let (s, b) = post_multipart(&rt, &[("file", Some("d.png"), &image_bytes("upside_down.png"))]).await;
    assert_eq!(s, 200, "{b}");
    let out = &b["predictions"][0][exp["output"].as_str().expect("output")];
    let probs: Vec<f64> = out.as_array().expect("raw scores").iter().map(|v| v.as_f64().unwrap_or(-1.0)).collect();
    assert_probs(
        &probs,
        &exp["images"][1]["probabilities"],
        exp["tolerance"].as_f64().unwrap_or(0.0),
        "upside_down.png",
    );
    assert!(b["predictions"][0].get("top_k").is_none(), "{b}");
}
