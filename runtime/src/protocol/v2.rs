//! Open Inference Protocol v2 (KServe / Triton / MLServer) REST codec, including Triton's binary
//! tensor extension (`Inference-Header-Content-Length`, `binary_data_size`, `binary_data`).

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{Limits, check_inputs, input_header, shape_str};
use crate::{
    error::ApiError,
    model::{ModelInfo, TensorSpec},
    tensor::{ShapeTracker, Tensor, TensorData, decode_json_into},
};

/// The header naming the length of the JSON part of a body that carries binary tensors.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// The platform named in model metadata (Triton's name for ONNX Runtime models).
pub const PLATFORM: &str = "onnxruntime_onnx";

#[derive(Deserialize)]
struct RequestJson<'a> {
    #[serde(default)]
    id: Option<String>,
    #[serde(borrow)]
    inputs: Vec<InputJson<'a>>,
    #[serde(default)]
    outputs: Option<Vec<OutputJson>>,
    #[serde(default)]
    parameters: Option<RequestParams>,
}

#[derive(Deserialize)]
struct InputJson<'a> {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    #[serde(default)]
    parameters: Option<InputParams>,
}

#[derive(Deserialize, Default)]
struct InputParams {
    #[serde(default)]
    binary_data_size: Option<u64>,
}

#[derive(Deserialize)]
struct OutputJson {
    name: String,
    #[serde(default)]
    parameters: Option<OutputParams>,
}

#[derive(Deserialize, Default)]
struct OutputParams {
    #[serde(default)]
    binary_data: Option<bool>,
}

#[derive(Deserialize, Default)]
struct RequestParams {
    #[serde(default)]
    binary_data_output: Option<bool>,
    #[serde(default)]
    timeout_ms: Option<u64>,
    /// `false` bypasses the prediction cache; checked by [`crate::cache::parse_json_flag`].
    #[serde(default)]
    cache: Option<serde_json::Value>,
}

/// A decoded inference request.
#[derive(Debug)]
pub struct InferRequest {
    pub id: Option<String>,
    /// Inputs in the model's order, checked against its signature.
    pub inputs: Vec<Tensor>,
    /// Outputs to return, in order, each with whether it goes in binary form.
    pub outputs: Vec<(usize, bool)>,
    /// Client deadline in milliseconds (`parameters.timeout_ms`).
    pub timeout_ms: Option<u64>,
    /// False when `parameters.cache` is `false` (bypass the prediction cache).
    pub cache: bool,
}

/// Decodes a request body. `header_len` is the `Inference-Header-Content-Length` header's value.
pub fn decode(
    body: &[u8],
    header_len: Option<usize>,
    info: &ModelInfo,
    limits: Limits,
) -> Result<InferRequest, ApiError> {
    decode_with_images(body, header_len, info, limits, None)
}

/// [`decode`], where a `BYTES` input for the image input of `images` holds base64 JPEG/PNG
/// images that become the model's FP32 tensor.
pub fn decode_with_images(
    body: &[u8],
    header_len: Option<usize>,
    info: &ModelInfo,
    limits: Limits,
    images: Option<&crate::image::Pipeline>,
) -> Result<InferRequest, ApiError> {
    let (json, mut binary) = match header_len {
        Some(n) if n > body.len() => {
            return Err(ApiError::invalid(format!(
                "Inference-Header-Content-Length is {n} but the body has only {} bytes",
                body.len()
            )));
        }
        Some(n) => body.split_at(n),
        None => (body, &[][..]),
    };
    let req: RequestJson<'_> =
        serde_json::from_slice(json).map_err(|e| ApiError::invalid(format!("invalid inference request JSON: {e}")))?;
    if req.inputs.is_empty() {
        return Err(ApiError::invalid("'inputs' is empty; the model's inputs are required"));
    }
    let mut tensors = Vec::with_capacity(req.inputs.len());
    for (i, input) in req.inputs.iter().enumerate() {
        let (field, dt, count) = input_header(info, i, &input.name, &input.datatype, &input.shape)?;
        let binary_size = input.parameters.as_ref().and_then(|p| p.binary_data_size);
        let data = match (binary_size, input.data) {
            (Some(size), _) => {
                let size = usize::try_from(size).unwrap_or(usize::MAX);
                if size > binary.len() {
                    return Err(ApiError::invalid(format!(
                        "{field}: binary_data_size {size} runs past the end of the body ({} binary bytes left)",
                        binary.len()
                    )));
                }
                let (raw, rest) = binary.split_at(size);
                binary = rest;
                TensorData::from_le_bytes(dt, raw)
                    .map_err(|e| ApiError::invalid(format!("{field}: binary data: {e}")))?
            }
            (None, Some(raw)) => {
                // Every element takes at least two bytes of JSON ("1,"): a claimed shape cannot
                // reserve more than the body could hold.
                let mut data = TensorData::empty(dt, count.min(1 << 20).min(raw.get().len() / 2 + 1));
                let mut tracker = ShapeTracker::default();
                decode_json_into(raw.get(), &mut data, &mut tracker, count).map_err(|e| {
                    ApiError::invalid(format!(
                        "{field}: data: {}; shape {} needs {count} {dt} values",
                        e.0,
                        shape_str(&input.shape)
                    ))
                })?;
                data
            }
            (None, None) => {
                return Err(ApiError::invalid(format!(
                    "{field}: neither 'data' nor parameters.binary_data_size is given"
                )));
            }
        };
        tensors.push(Tensor { name: input.name.clone(), shape: input.shape.clone(), data });
    }
    if !binary.is_empty() {
        return Err(ApiError::invalid(format!(
            "{} bytes of binary data follow the JSON header but no input claims them",
            binary.len()
        )));
    }
    let params = req.parameters.unwrap_or_default();
    let cache = crate::cache::parse_json_flag(params.cache.as_ref())?;
    let binary_default = params.binary_data_output.unwrap_or(false);
    let outputs = match &req.outputs {
        None => (0..info.outputs.len()).map(|i| (i, binary_default)).collect(),
        Some(list) if list.is_empty() => (0..info.outputs.len()).map(|i| (i, binary_default)).collect(),
        Some(list) => list
            .iter()
            .map(|o| {
                let idx = info.outputs.iter().position(|s| s.name == o.name).ok_or_else(|| {
                    let known: Vec<&str> = info.outputs.iter().map(|s| s.name.as_str()).collect();
                    ApiError::invalid(format!("unknown output '{}'; the model's outputs are {known:?}", o.name))
                })?;
                let bin = o.parameters.as_ref().and_then(|p| p.binary_data).unwrap_or(binary_default);
                Ok((idx, bin))
            })
            .collect::<Result<_, ApiError>>()?,
    };
    let tensors = match images {
        Some(p) => p.convert_v2(tensors, limits)?,
        None => tensors,
    };
    let inputs = check_inputs(info, tensors, limits)?;
    Ok(InferRequest { id: req.id, inputs, outputs, timeout_ms: params.timeout_ms, cache })
}

#[derive(Serialize)]
struct ResponseJson<'a> {
    model_name: &'a str,
    model_version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    outputs: Vec<OutputTensorJson<'a>>,
}

#[derive(Serialize)]
struct OutputTensorJson<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: &'a [i64],
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a TensorData>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<BinaryParams>,
}

#[derive(Serialize)]
struct BinaryParams {
    binary_data_size: usize,
}

/// An encoded response: the body, and the JSON header length when binary tensors follow it.
pub struct Encoded {
    pub body: Vec<u8>,
    pub header_len: Option<usize>,
}

/// Encodes the outputs selected by the request.
pub fn encode(info: &ModelInfo, id: Option<&str>, outputs: &[Tensor], selection: &[(usize, bool)]) -> Encoded {
    let mut binary = Vec::new();
    let mut list = Vec::with_capacity(selection.len());
    for (idx, bin) in selection {
        let Some(t) = outputs.get(*idx) else { continue };
        let (data, parameters) = if *bin {
            let before = binary.len();
            t.data.write_le_bytes(&mut binary);
            (None, Some(BinaryParams { binary_data_size: binary.len() - before }))
        } else {
            (Some(&t.data), None)
        };
        list.push(OutputTensorJson {
            name: &t.name,
            datatype: t.datatype().oip_name(),
            shape: &t.shape,
            data,
            parameters,
        });
    }
    let resp = ResponseJson { model_name: &info.name, model_version: &info.version, id, outputs: list };
    let mut body = Vec::with_capacity(256 + binary.len());
    // Serializing plain structs of numbers and strings into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut body, &resp);
    if binary.is_empty() {
        Encoded { body, header_len: None }
    } else {
        let header_len = body.len();
        body.extend_from_slice(&binary);
        Encoded { body, header_len: Some(header_len) }
    }
}

#[derive(Serialize)]
struct TensorMeta<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: &'a [i64],
}

#[derive(Serialize)]
struct ModelMeta<'a> {
    name: &'a str,
    versions: [&'a str; 1],
    platform: &'static str,
    inputs: Vec<TensorMeta<'a>>,
    outputs: Vec<TensorMeta<'a>>,
}

fn metas(specs: &[TensorSpec]) -> Vec<TensorMeta<'_>> {
    specs.iter().map(|s| TensorMeta { name: &s.name, datatype: s.datatype.oip_name(), shape: &s.shape }).collect()
}

/// `GET /v2/models/{m}`: name, versions, platform, inputs and outputs.
pub fn model_metadata(info: &ModelInfo) -> serde_json::Value {
    serde_json::to_value(ModelMeta {
        name: &info.name,
        versions: [&info.version],
        platform: PLATFORM,
        inputs: metas(&info.inputs),
        outputs: metas(&info.outputs),
    })
    .unwrap_or_default()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::tensor::DataType;

    /// The iris model's metadata (no class names), shared by the protocols' unit tests.
    pub(crate) fn iris() -> ModelInfo {
        ModelInfo {
            name: "iris".into(),
            version: "1".into(),
            inputs: vec![TensorSpec { name: "input".into(), datatype: DataType::F32, shape: vec![-1, 4] }],
            outputs: vec![
                TensorSpec { name: "label".into(), datatype: DataType::I64, shape: vec![-1] },
                TensorSpec { name: "probabilities".into(), datatype: DataType::F32, shape: vec![-1, 3] },
            ],
            class_labels: None,
        }
    }

    const LIMITS: Limits = Limits { max_rows: 1000 };

    fn err(body: &str) -> String {
        decode(body.as_bytes(), None, &iris(), LIMITS).unwrap_err().message
    }

    #[test]
    fn decodes_flat_and_nested_data_and_echoes_id() {
        let flat =
            r#"{"id":"r1","inputs":[{"name":"input","shape":[2,4],"datatype":"FP32","data":[1,2,3,4,5,6,7,8]}]}"#;
        let nested = r#"{"inputs":[{"data":[[1,2,3,4],[5,6,7,8]],"name":"input","shape":[2,4],"datatype":"FP32"}]}"#;
        let a = decode(flat.as_bytes(), None, &iris(), LIMITS).unwrap();
        let b = decode(nested.as_bytes(), None, &iris(), LIMITS).unwrap();
        assert_eq!(a.inputs, b.inputs);
        assert_eq!(a.id.as_deref(), Some("r1"));
        assert_eq!(a.outputs, vec![(0, false), (1, false)]);
    }

    #[test]
    fn errors_name_the_field_and_what_was_expected() {
        assert!(
            err(r#"{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}"#)
                .contains("unknown input 'x'; the model's inputs are 'input'")
        );
        assert!(
            err(r#"{"inputs":[{"name":"input","shape":[1,4],"datatype":"INT64","data":[1,2,3,4]}]}"#)
                .contains("input 'input' has datatype INT64, expected FP32")
        );
        assert!(
            err(r#"{"inputs":[{"name":"input","shape":[1,3],"datatype":"FP32","data":[1,2,3]}]}"#)
                .contains("expected [-1, 4]")
        );
        assert!(
            err(r#"{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[1,2,3]}]}"#)
                .contains("has 3 elements but shape [1, 4] needs 4")
        );
        assert!(
            err(r#"{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[1,2,3,"a"]}]}"#)
                .contains("element 3 is the string \"a\"")
        );
        assert!(
            err(r#"{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP16","data":[1,2,3,4]}]}"#)
                .contains("datatype \"FP16\" is not supported; expected FP32")
        );
        assert!(err(r#"{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32"}]}"#).contains("neither 'data'"));
        assert!(
            err(r#"{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[1,2,3,4,5]}]}"#)
                .contains("more than 4 elements")
        );
        assert!(err(r#"{"inputs": [}"#).contains("invalid inference request JSON"));
        assert!(err(r#"{"input": []}"#).contains("missing field `inputs`"));
        assert!(err(r#"{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}],"outputs":[{"name":"nope"}]}"#)
            .contains("unknown output 'nope'"));
    }

    #[test]
    fn huge_declared_shapes_are_refused_without_allocating() {
        let e = err(r#"{"inputs":[{"name":"input","shape":[1000000000000,4],"datatype":"FP32","data":[1,2,3,4]}]}"#);
        assert!(e.contains("needs 4000000000000"), "{e}");
        let e = err(
            r#"{"inputs":[{"name":"input","shape":[9223372036854775807,9223372036854775807],"datatype":"FP32","data":[1]}]}"#,
        );
        assert!(e.contains("is not valid"), "{e}");
    }

    #[test]
    fn row_limit_is_named() {
        let limits = Limits { max_rows: 1 };
        let body = r#"{"inputs":[{"name":"input","shape":[2,4],"datatype":"FP32","data":[1,2,3,4,5,6,7,8]}]}"#;
        let e = decode(body.as_bytes(), None, &iris(), limits).unwrap_err().message;
        assert!(e.contains("batch of 2 rows exceeds the limit of 1 rows"), "{e}");
    }

    #[test]
    fn binary_inputs_and_outputs() {
        let header = r#"{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","parameters":{"binary_data_size":16}}],"outputs":[{"name":"label","parameters":{"binary_data":true}}]}"#;
        let mut body = header.as_bytes().to_vec();
        TensorData::F32(vec![1.0, 2.0, 3.0, 4.0]).write_le_bytes(&mut body);
        let req = decode(&body, Some(header.len()), &iris(), LIMITS).unwrap();
        assert_eq!(req.inputs[0].data, TensorData::F32(vec![1.0, 2.0, 3.0, 4.0]));
        assert_eq!(req.outputs, vec![(0, true)]);
        let out = vec![
            Tensor { name: "label".into(), shape: vec![1], data: TensorData::I64(vec![2]) },
            Tensor { name: "probabilities".into(), shape: vec![1, 3], data: TensorData::F32(vec![0.1, 0.2, 0.7]) },
        ];
        let enc = encode(&iris(), None, &out, &req.outputs);
        let n = enc.header_len.unwrap();
        let json: serde_json::Value = serde_json::from_slice(&enc.body[..n]).unwrap();
        assert_eq!(json["outputs"][0]["parameters"]["binary_data_size"], 8);
        assert_eq!(&enc.body[n..], &2i64.to_le_bytes());
        assert!(decode(&body, Some(body.len() + 1), &iris(), LIMITS).unwrap_err().message.contains("only"));
        let mut extra = body.clone();
        extra.push(0);
        assert!(decode(&extra, Some(header.len()), &iris(), LIMITS).unwrap_err().message.contains("no input claims"));
    }
}
