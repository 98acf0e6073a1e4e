//! One entry point over every request decoder, for the cargo-fuzz target (runtime/fuzz) and the
//! bounded property test (tests/decoders_fuzz.rs): the first byte picks the decoder, the rest is
//! the request. Decoders must return `Ok` or the JSON error, never panic, and never allocate in
//! proportion to a number the request merely claims (a shape of [1e12], an image header of
//! 60000x60000): what they return is checked for consistency here.

use bytes::Bytes;

use crate::{
    image::{Pipeline, Preprocess, decode_image_unguarded, read_multipart},
    model::{ModelInfo, TensorSpec},
    protocol::{Limits, grpc, v1, v2},
    tensor::{DataType, Tensor, element_count},
};

const LIMITS: Limits = Limits { max_rows: 64 };
/// Images larger than this are refused before decoding (4 megapixels).
const MAX_PIXELS: u64 = 4_000_000;

fn spec(name: &str, datatype: DataType, shape: &[i64]) -> TensorSpec {
    TensorSpec { name: name.into(), datatype, shape: shape.to_vec() }
}

fn info(inputs: Vec<TensorSpec>) -> ModelInfo {
    ModelInfo {
        name: "m".into(),
        version: "1".into(),
        inputs,
        outputs: vec![spec("probabilities", DataType::F32, &[-1, 3])],
        class_labels: None,
    }
}

/// The models requests are decoded against: a tabular one, one with several inputs of other
/// datatypes, and an image one.
pub struct Models {
    pub tabular: ModelInfo,
    pub mixed: ModelInfo,
    pub image: ModelInfo,
    pub pipeline: Pipeline,
}

impl Models {
    pub fn new() -> Option<Models> {
        let image = info(vec![spec("x", DataType::F32, &[-1, 3, 8, 8])]);
        let pre = Preprocess { max_megapixels: MAX_PIXELS as f64 / 1e6, ..Preprocess::default() };
        let pipeline = Pipeline::new(&pre, &image).ok()?;
        Some(Models {
            tabular: info(vec![spec("input", DataType::F32, &[-1, 4])]),
            mixed: info(vec![
                spec("ids", DataType::I64, &[-1, 2]),
                spec("text", DataType::Bytes, &[-1]),
                spec("flag", DataType::Bool, &[-1, 1]),
            ]),
            image,
            pipeline,
        })
    }
}

fn check(tensors: &[Tensor]) {
    for t in tensors {
        let count = element_count(&t.shape);
        assert_eq!(count, Some(t.data.len()), "decoded tensor '{}' disagrees with its shape", t.name);
    }
}

/// Feeds `data` to the decoder its first byte selects.
pub fn decode_any(models: &Models, data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else { return };
    match which % 9 {
        0 => {
            for m in [&models.tabular, &models.mixed] {
                let r = v2::decode(rest, None, m, LIMITS);
                // The one-pass decoder answers exactly as the two-pass reference does.
                assert_eq!(r, v2::decode_two_pass(rest, None, m, LIMITS), "one-pass and two-pass v2 decoding differ");
                if let Ok(r) = r {
                    check(&r.inputs);
                }
            }
        }
        1 => {
            // Binary tensor extension: two bytes of JSON header length, then the body.
            let (n, body) = match rest {
                [a, b, body @ ..] => (usize::from(u16::from_le_bytes([*a, *b])), body),
                _ => return,
            };
            for m in [&models.tabular, &models.mixed] {
                let r = v2::decode(body, Some(n), m, LIMITS);
                assert_eq!(
                    r,
                    v2::decode_two_pass(body, Some(n), m, LIMITS),
                    "one-pass and two-pass v2 decoding differ"
                );
                if let Ok(r) = r {
                    check(&r.inputs);
                }
            }
        }
        2 => {
            for m in [&models.tabular, &models.mixed, &models.image] {
                let r = v1::decode(rest, m, LIMITS);
                assert_eq!(r, v1::decode_two_pass(rest, m, LIMITS), "one-pass and two-pass V1 decoding differ");
                if let Ok(t) = r {
                    check(&t);
                }
            }
        }
        3 => {
            if let Ok(img) = decode_image_unguarded(rest, MAX_PIXELS) {
                assert!(u64::from(img.width()) * u64::from(img.height()) <= MAX_PIXELS);
            }
        }
        4 => {
            let mut out = Vec::new();
            if models.pipeline.preprocess_into(rest, &mut out).is_ok() {
                assert_eq!(out.len(), models.pipeline.image_len());
            }
        }
        5 => {
            if let Ok(r) = v2::decode_with_images(rest, None, &models.image, LIMITS, Some(&models.pipeline)) {
                check(&r.inputs);
            }
        }
        6 => {
            let body = Bytes::copy_from_slice(rest);
            if let Ok(files) = futures::executor::block_on(read_multipart(body, "XyZ", LIMITS)) {
                assert!(!files.is_empty() && files.len() <= LIMITS.max_rows);
                let refs: Vec<(String, &[u8])> = files.iter().map(|(n, b)| (n.clone(), b.as_ref())).collect();
                if let Ok(t) = models.pipeline.tensor(&refs) {
                    check(&[t]);
                }
            }
        }
        8 => {
            // gRPC: a protobuf ModelInferRequest (typed contents or raw_input_contents).
            use prost::Message;
            let Ok(req) = grpc::pb::ModelInferRequest::decode(rest) else { return };
            for m in [&models.tabular, &models.mixed] {
                if let Ok(r) = grpc::decode(req.clone(), m, LIMITS, None) {
                    check(&r.inputs);
                }
            }
            if let Ok(r) = grpc::decode(req, &models.image, LIMITS, Some(&models.pipeline)) {
                check(&r.inputs);
            }
        }
        _ => {
            let _ = Preprocess::parse(&String::from_utf8_lossy(rest));
        }
    }
}
