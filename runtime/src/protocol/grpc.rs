//! Open Inference Protocol v2 over gRPC (`inference.GRPCInferenceService`, KServe's
//! `grpc_predict_v2.proto`, which Triton's `tritonclient.grpc` also speaks): decodes a
//! `ModelInferRequest` into the same checked, typed tensors the REST codec produces, and encodes
//! outputs into a `ModelInferResponse`.
//!
//! Inputs come either as typed `contents` (the repeated field of the tensor's datatype) or as
//! `raw_input_contents` (little-endian bytes, BYTES elements with a 4-byte length prefix: the
//! layout of the binary tensor extension). The response uses the form the request used: raw
//! requests (what `tritonclient.grpc` sends) get `raw_output_contents`, typed ones typed
//! `contents`.

use super::{Limits, check_inputs, input_header, shape_str, too_many_rows};
use crate::{
    error::ApiError,
    image::{Pipeline, base64_image, is_jpeg_or_png},
    model::{ModelInfo, TensorSpec},
    tensor::{DataType, Tensor, TensorData},
};

/// The code generated from `runtime/proto/grpc_predict_v2.proto` (package `inference`).
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod pb {
    tonic::include_proto!("inference");

    /// The encoded descriptor set of the proto, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/inference_descriptor.bin"));
}

use pb::{InferParameter, InferTensorContents, infer_parameter::ParameterChoice};

/// A decoded `ModelInferRequest`.
#[derive(Debug)]
pub struct InferRequest {
    /// The request's `id` (empty when not given), echoed in the response.
    pub id: String,
    /// Inputs in the model's order, checked against its signature.
    pub inputs: Vec<Tensor>,
    /// Indices of the outputs to return, in order.
    pub outputs: Vec<usize>,
    /// Answer with `raw_output_contents` (the request used `raw_input_contents`).
    pub raw: bool,
    /// Deadline from the request's parameters (`timeout_ms`, or Triton's `timeout` in µs).
    pub timeout_ms: Option<u64>,
    /// False when the request's `cache` parameter is `bool_param: false` (bypass the cache).
    pub cache: bool,
}

/// Decodes and checks a request. `images` converts BYTES elements of the image input (raw
/// JPEG/PNG bytes, or base64 text as on REST) into the model's FP32 tensor.
pub fn decode(
    req: pb::ModelInferRequest,
    info: &ModelInfo,
    limits: Limits,
    images: Option<&Pipeline>,
) -> Result<InferRequest, ApiError> {
    if req.inputs.is_empty() {
        return Err(ApiError::invalid("'inputs' is empty; the model's inputs are required"));
    }
    let raw = !req.raw_input_contents.is_empty();
    if raw && req.raw_input_contents.len() != req.inputs.len() {
        return Err(ApiError::invalid(format!(
            "raw_input_contents has {} entries for {} inputs; give one per input, in the order of 'inputs'",
            req.raw_input_contents.len(),
            req.inputs.len()
        )));
    }
    let mut raw_contents = req.raw_input_contents.into_iter();
    let mut tensors = Vec::with_capacity(req.inputs.len());
    for (i, input) in req.inputs.into_iter().enumerate() {
        let (field, dt, count) = input_header(info, i, &input.name, &input.datatype, &input.shape)?;
        let contents = input.contents.unwrap_or_default();
        let image = images.filter(|p| dt == DataType::Bytes && p.input == input.name);
        let tensor = match (raw_contents.next(), image) {
            (Some(_), _) if !is_empty(&contents) => {
                return Err(ApiError::invalid(format!(
                    "{field}: has typed contents while raw_input_contents is used; give every input one way"
                )));
            }
            (Some(bytes), Some(p)) => {
                let items = split_bytes(&bytes)
                    .map_err(|e| ApiError::invalid(format!("{field}: raw_input_contents[{i}]: {e}")))?;
                image_tensor(p, &field, &input.shape, &items, limits)?
            }
            (Some(bytes), None) => {
                let data = TensorData::from_le_bytes(dt, &bytes)
                    .map_err(|e| ApiError::invalid(format!("{field}: raw_input_contents[{i}]: {e}")))?;
                Tensor { name: input.name, shape: input.shape, data }
            }
            (None, Some(p)) => {
                check_only(&contents, "bytes_contents", &field, dt)?;
                let items: Vec<&[u8]> = contents.bytes_contents.iter().map(|b| b.as_ref()).collect();
                image_tensor(p, &field, &input.shape, &items, limits)?
            }
            (None, None) => {
                let data = typed(contents, dt, count, &field)?;
                Tensor { name: input.name, shape: input.shape, data }
            }
        };
        tensors.push(tensor);
    }
    let mut outputs = Vec::with_capacity(req.outputs.len());
    for (i, o) in req.outputs.iter().enumerate() {
        if o.parameters.contains_key("classification") {
            return Err(ApiError::invalid(format!(
                "outputs[{i}] ('{}'): parameter 'classification' (Triton's classification extension) is not supported; ask for the output itself",
                o.name
            )));
        }
        let idx = info.outputs.iter().position(|s| s.name == o.name).ok_or_else(|| {
            let known: Vec<&str> = info.outputs.iter().map(|s| s.name.as_str()).collect();
            ApiError::invalid(format!("unknown output '{}'; the model's outputs are {known:?}", o.name))
        })?;
        outputs.push(idx);
    }
    if outputs.is_empty() {
        outputs = (0..info.outputs.len()).collect();
    }
    let timeout_ms = timeout_ms(&req.parameters)?;
    let cache = match req.parameters.get("cache").and_then(|p| p.parameter_choice.as_ref()) {
        None => true,
        Some(ParameterChoice::BoolParam(b)) => *b,
        Some(other) => return Err(ApiError::invalid(format!("parameters.cache must be a bool_param, got {other:?}"))),
    };
    let inputs = check_inputs(info, tensors, limits)?;
    Ok(InferRequest { id: req.id, inputs, outputs, raw, timeout_ms, cache })
}

/// The request's own deadline: `timeout_ms` (as on REST) or Triton's `timeout` (microseconds);
/// the shorter when both are given.
pub(crate) fn timeout_ms(params: &std::collections::HashMap<String, InferParameter>) -> Result<Option<u64>, ApiError> {
    let int = |key: &str| -> Result<Option<u64>, ApiError> {
        match params.get(key).and_then(|p| p.parameter_choice.as_ref()) {
            None => Ok(None),
            Some(ParameterChoice::Int64Param(v)) if *v >= 0 => Ok(Some(*v as u64)),
            Some(other) => {
                Err(ApiError::invalid(format!("parameters.{key} must be a non-negative int64_param, got {other:?}")))
            }
        }
    };
    let ms = int("timeout_ms")?;
    let triton = int("timeout")?.map(|us| us.div_ceil(1000));
    Ok(match (ms, triton) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    })
}

fn is_empty(c: &InferTensorContents) -> bool {
    populated(c).is_empty()
}

/// Names of the non-empty repeated fields.
fn populated(c: &InferTensorContents) -> Vec<&'static str> {
    let mut v = Vec::new();
    let fields = [
        ("bool_contents", c.bool_contents.len()),
        ("int_contents", c.int_contents.len()),
        ("int64_contents", c.int64_contents.len()),
        ("uint_contents", c.uint_contents.len()),
        ("uint64_contents", c.uint64_contents.len()),
        ("fp32_contents", c.fp32_contents.len()),
        ("fp64_contents", c.fp64_contents.len()),
        ("bytes_contents", c.bytes_contents.len()),
    ];
    for (name, len) in fields {
        if len > 0 {
            v.push(name);
        }
    }
    v
}

/// The `contents` field that holds values of `dt`.
fn field_of(dt: DataType) -> &'static str {
    match dt {
        DataType::Bool => "bool_contents",
        DataType::I8 | DataType::I16 | DataType::I32 => "int_contents",
        DataType::I64 => "int64_contents",
        DataType::U8 | DataType::U16 | DataType::U32 => "uint_contents",
        DataType::U64 => "uint64_contents",
        DataType::F32 => "fp32_contents",
        DataType::F64 => "fp64_contents",
        DataType::Bytes => "bytes_contents",
    }
}

/// Refuses values given in another field than `want` (e.g. FP32 values in `fp64_contents`).
fn check_only(c: &InferTensorContents, want: &str, field: &str, dt: DataType) -> Result<(), ApiError> {
    match populated(c).into_iter().find(|f| *f != want) {
        Some(other) => Err(ApiError::invalid(format!(
            "{field}: datatype {dt} takes its values in contents.{want}, but contents.{other} is set"
        ))),
        None => Ok(()),
    }
}

/// Typed `contents` → a buffer of `dt`, narrowing the 32-bit fields of the smaller integer types.
fn typed(c: InferTensorContents, dt: DataType, count: usize, field: &str) -> Result<TensorData, ApiError> {
    let want = field_of(dt);
    check_only(&c, want, field, dt)?;
    fn narrow<S: Copy + std::fmt::Display, T: TryFrom<S>>(
        v: Vec<S>,
        field: &str,
        name: &str,
        dt: DataType,
    ) -> Result<Vec<T>, ApiError> {
        v.into_iter()
            .enumerate()
            .map(|(j, x)| {
                T::try_from(x).map_err(|_| {
                    ApiError::invalid(format!("{field}: contents.{name}[{j}] = {x} is out of range for {dt}"))
                })
            })
            .collect()
    }
    let data = match dt {
        DataType::Bool => TensorData::Bool(c.bool_contents),
        DataType::I8 => TensorData::I8(narrow(c.int_contents, field, want, dt)?),
        DataType::I16 => TensorData::I16(narrow(c.int_contents, field, want, dt)?),
        DataType::I32 => TensorData::I32(c.int_contents),
        DataType::I64 => TensorData::I64(c.int64_contents),
        DataType::U8 => TensorData::U8(narrow(c.uint_contents, field, want, dt)?),
        DataType::U16 => TensorData::U16(narrow(c.uint_contents, field, want, dt)?),
        DataType::U32 => TensorData::U32(c.uint_contents),
        DataType::U64 => TensorData::U64(c.uint64_contents),
        DataType::F32 => TensorData::F32(c.fp32_contents),
        DataType::F64 => TensorData::F64(c.fp64_contents),
        DataType::Bytes => TensorData::Bytes(
            c.bytes_contents
                .into_iter()
                .enumerate()
                .map(|(j, b)| {
                    String::from_utf8(b.to_vec()).map_err(|_| {
                        ApiError::invalid(format!("{field}: contents.bytes_contents[{j}] is not valid UTF-8"))
                    })
                })
                .collect::<Result<_, _>>()?,
        ),
    };
    if data.is_empty() && count > 0 {
        return Err(ApiError::invalid(format!(
            "{field}: no data: give contents.{want} or raw_input_contents ({count} {dt} values)"
        )));
    }
    Ok(data)
}

/// Splits raw BYTES contents (4-byte little-endian length, then the bytes) into elements.
fn split_bytes(mut raw: &[u8]) -> Result<Vec<&[u8]>, String> {
    let mut out = Vec::new();
    while !raw.is_empty() {
        let Some((len, rest)) = raw.split_first_chunk::<4>() else {
            return Err("truncated BYTES element length prefix".into());
        };
        let n = u32::from_le_bytes(*len) as usize;
        if rest.len() < n {
            return Err(format!("BYTES element of {n} bytes runs past the end of the data"));
        }
        let (el, rest) = rest.split_at(n);
        out.push(el);
        raw = rest;
    }
    Ok(out)
}

/// The image input: one JPEG/PNG per element (raw bytes, or base64 text as on REST) → the
/// model's preprocessed FP32 tensor.
fn image_tensor(p: &Pipeline, field: &str, shape: &[i64], items: &[&[u8]], limits: Limits) -> Result<Tensor, ApiError> {
    if items.len() > limits.max_rows {
        return Err(too_many_rows(items.len(), limits.max_rows));
    }
    if items.is_empty() || shape.first().is_none_or(|d| usize::try_from(*d).ok() != Some(items.len())) {
        return Err(ApiError::invalid(format!(
            "{field}: BYTES images need shape [N] (or [N, 1]) with one image per element; got shape {} with {} elements",
            shape_str(shape),
            items.len()
        )));
    }
    let mut decoded: Vec<(String, std::borrow::Cow<'_, [u8]>)> = Vec::with_capacity(items.len());
    for (i, el) in items.iter().enumerate() {
        let bytes = if is_jpeg_or_png(el) {
            std::borrow::Cow::Borrowed(*el)
        } else {
            let text = std::str::from_utf8(el).map_err(|_| {
                ApiError::invalid(format!("{field} element {i}: neither a JPEG/PNG image nor base64 text"))
            })?;
            std::borrow::Cow::Owned(
                base64_image(text).map_err(|e| ApiError::invalid(format!("{field} element {i}: {e}")))?,
            )
        };
        decoded.push((format!("element {i}"), bytes));
    }
    let refs: Vec<(String, &[u8])> = decoded.iter().map(|(w, b)| (w.clone(), b.as_ref())).collect();
    p.tensor(&refs).map_err(|e| ApiError::invalid(format!("{field}: {}", e.message)))
}

/// Encodes the selected outputs, raw or typed.
pub fn encode(
    info: &ModelInfo,
    id: String,
    outputs: &[Tensor],
    selection: &[usize],
    raw: bool,
) -> pb::ModelInferResponse {
    let mut resp = pb::ModelInferResponse {
        model_name: info.name.clone(),
        model_version: info.version.clone(),
        id,
        ..Default::default()
    };
    for idx in selection {
        let Some(t) = outputs.get(*idx) else { continue };
        let contents = if raw {
            resp.raw_output_contents.push(t.data.to_le_bytes());
            None
        } else {
            Some(contents_of(&t.data))
        };
        resp.outputs.push(pb::model_infer_response::InferOutputTensor {
            name: t.name.clone(),
            datatype: t.datatype().oip_name().to_string(),
            shape: t.shape.clone(),
            parameters: Default::default(),
            contents,
        });
    }
    resp
}

/// Typed contents: each datatype in its field (8/16-bit integers widen to the 32-bit fields).
fn contents_of(data: &TensorData) -> InferTensorContents {
    let mut c = InferTensorContents::default();
    match data {
        TensorData::Bool(v) => c.bool_contents = v.clone(),
        TensorData::I8(v) => c.int_contents = v.iter().map(|x| i32::from(*x)).collect(),
        TensorData::I16(v) => c.int_contents = v.iter().map(|x| i32::from(*x)).collect(),
        TensorData::I32(v) => c.int_contents = v.clone(),
        TensorData::I64(v) => c.int64_contents = v.clone(),
        TensorData::U8(v) => c.uint_contents = v.iter().map(|x| u32::from(*x)).collect(),
        TensorData::U16(v) => c.uint_contents = v.iter().map(|x| u32::from(*x)).collect(),
        TensorData::U32(v) => c.uint_contents = v.clone(),
        TensorData::U64(v) => c.uint64_contents = v.clone(),
        TensorData::F32(v) => c.fp32_contents = v.clone(),
        TensorData::F64(v) => c.fp64_contents = v.clone(),
        TensorData::Bytes(v) => c.bytes_contents = v.iter().map(|s| s.clone().into_bytes()).collect(),
    }
    c
}

fn metas(specs: &[TensorSpec]) -> Vec<pb::model_metadata_response::TensorMetadata> {
    specs
        .iter()
        .map(|s| pb::model_metadata_response::TensorMetadata {
            name: s.name.clone(),
            datatype: s.datatype.oip_name().to_string(),
            shape: s.shape.clone(),
        })
        .collect()
}

/// `ModelMetadata`: the same names, datatypes and shapes as `GET /v2/models/{m}`.
pub fn model_metadata(info: &ModelInfo) -> pb::ModelMetadataResponse {
    pb::ModelMetadataResponse {
        name: info.name.clone(),
        versions: vec![info.version.clone()],
        platform: super::v2::PLATFORM.to_string(),
        inputs: metas(&info.inputs),
        outputs: metas(&info.outputs),
    }
}

#[cfg(test)]
mod tests {
    use pb::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};

    use super::*;

    use super::super::v2::tests::iris;

    const LIMITS: Limits = Limits { max_rows: 1000 };

    fn input(datatype: &str, shape: Vec<i64>, contents: Option<InferTensorContents>) -> InferInputTensor {
        InferInputTensor {
            name: "input".into(),
            datatype: datatype.into(),
            shape,
            parameters: Default::default(),
            contents,
        }
    }

    fn fp32(v: Vec<f32>) -> Option<InferTensorContents> {
        Some(InferTensorContents { fp32_contents: v, ..Default::default() })
    }

    fn req(inputs: Vec<InferInputTensor>) -> pb::ModelInferRequest {
        pb::ModelInferRequest { model_name: "iris".into(), inputs, ..Default::default() }
    }

    fn err(r: pb::ModelInferRequest) -> String {
        decode(r, &iris(), LIMITS, None).unwrap_err().message
    }

    #[test]
    fn typed_and_raw_contents_decode_to_the_same_tensors() {
        let values = vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
        let typed = decode(req(vec![input("FP32", vec![2, 4], fp32(values.clone()))]), &iris(), LIMITS, None).unwrap();
        let mut r = req(vec![input("FP32", vec![2, 4], None)]);
        r.raw_input_contents = vec![TensorData::F32(values.clone()).to_le_bytes()];
        r.id = "r1".into();
        let raw = decode(r, &iris(), LIMITS, None).unwrap();
        assert_eq!(typed.inputs, raw.inputs);
        assert_eq!(typed.inputs[0].data, TensorData::F32(values));
        assert!(!typed.raw && raw.raw);
        assert_eq!(raw.id, "r1");
        assert_eq!(typed.outputs, vec![0, 1]);
    }

    #[test]
    fn errors_name_the_field_and_what_was_expected() {
        assert!(err(req(vec![])).contains("'inputs' is empty"));
        let mut r = req(vec![input("FP32", vec![1, 4], None)]);
        r.inputs[0].name = "x".into();
        r.inputs[0].contents = fp32(vec![1.0; 4]);
        assert!(err(r).contains("unknown input 'x'; the model's inputs are 'input'"));
        assert!(
            err(req(vec![input("FP16", vec![1, 4], fp32(vec![1.0; 4]))]))
                .contains("inputs[0] ('input'): datatype \"FP16\" is not supported; expected FP32")
        );
        assert!(
            err(req(vec![input("FP32", vec![1, 4], fp32(vec![1.0; 3]))]))
                .contains("has 3 elements but shape [1, 4] needs 4")
        );
        let wrong_field = Some(InferTensorContents { fp64_contents: vec![1.0; 4], ..Default::default() });
        assert!(
            err(req(vec![input("FP32", vec![1, 4], wrong_field)])).contains(
                "datatype FP32 takes its values in contents.fp32_contents, but contents.fp64_contents is set"
            )
        );
        assert!(err(req(vec![input("FP32", vec![1, 4], None)])).contains("no data: give contents.fp32_contents"));
        let mut r = req(vec![input("FP32", vec![1, 4], None)]);
        r.raw_input_contents = vec![vec![0u8; 15]];
        assert!(err(r).contains("raw_input_contents[0]: 15 bytes is not a multiple of the element size 4"));
        let mut r = req(vec![input("FP32", vec![1, 4], fp32(vec![1.0; 4]))]);
        r.raw_input_contents = vec![vec![0u8; 16]];
        assert!(err(r).contains("has typed contents while raw_input_contents is used"));
        let mut r = req(vec![input("FP32", vec![1, 4], None)]);
        r.raw_input_contents = vec![vec![0u8; 16], vec![0u8; 16]];
        assert!(err(r).contains("raw_input_contents has 2 entries for 1 inputs"));
        let mut r = req(vec![input("FP32", vec![1, 4], fp32(vec![1.0; 4]))]);
        r.outputs = vec![InferRequestedOutputTensor { name: "nope".into(), parameters: Default::default() }];
        assert!(err(r).contains("unknown output 'nope'"));
        let mut r = req(vec![input("FP32", vec![1, 4], fp32(vec![1.0; 4]))]);
        r.parameters.insert(
            "timeout".into(),
            InferParameter { parameter_choice: Some(ParameterChoice::StringParam("soon".into())) },
        );
        assert!(err(r).contains("parameters.timeout must be a non-negative int64_param"));
        let e = err(req(vec![input("FP32", vec![2000, 4], fp32(vec![1.0; 8000]))]));
        assert!(e.contains("batch of 2000 rows exceeds the limit of 1000 rows"), "{e}");
    }

    #[test]
    fn small_integers_are_range_checked() {
        let mut info = iris();
        info.inputs[0].datatype = DataType::U8;
        let c = Some(InferTensorContents { uint_contents: vec![1, 2, 3, 256], ..Default::default() });
        let e = decode(req(vec![input("UINT8", vec![1, 4], c)]), &info, LIMITS, None).unwrap_err().message;
        assert!(e.contains("contents.uint_contents[3] = 256 is out of range for UINT8"), "{e}");
    }

    #[test]
    fn timeouts_take_the_shorter_of_ms_and_triton_microseconds() {
        let mut r = req(vec![input("FP32", vec![1, 4], fp32(vec![1.0; 4]))]);
        r.parameters
            .insert("timeout".into(), InferParameter { parameter_choice: Some(ParameterChoice::Int64Param(40_500)) });
        assert_eq!(decode(r.clone(), &iris(), LIMITS, None).unwrap().timeout_ms, Some(41));
        r.parameters
            .insert("timeout_ms".into(), InferParameter { parameter_choice: Some(ParameterChoice::Int64Param(30)) });
        assert_eq!(decode(r, &iris(), LIMITS, None).unwrap().timeout_ms, Some(30));
    }

    #[test]
    fn outputs_follow_the_request_form() {
        let out = vec![
            Tensor { name: "label".into(), shape: vec![1], data: TensorData::I64(vec![2]) },
            Tensor { name: "probabilities".into(), shape: vec![1, 3], data: TensorData::F32(vec![0.1, 0.2, 0.7]) },
        ];
        let raw = encode(&iris(), "a".into(), &out, &[1], true);
        assert_eq!(raw.outputs.len(), 1);
        assert_eq!(raw.outputs[0].name, "probabilities");
        assert!(raw.outputs[0].contents.is_none());
        assert_eq!(
            raw.raw_output_contents[0].as_slice(),
            TensorData::F32(vec![0.1, 0.2, 0.7]).to_le_bytes().as_slice()
        );
        let typed = encode(&iris(), String::new(), &out, &[0, 1], false);
        assert!(typed.raw_output_contents.is_empty());
        assert_eq!(typed.outputs[0].contents.as_ref().unwrap().int64_contents, vec![2]);
        assert_eq!(typed.outputs[1].contents.as_ref().unwrap().fp32_contents, vec![0.1, 0.2, 0.7]);
        assert_eq!((typed.model_name.as_str(), typed.model_version.as_str()), ("iris", "1"));
    }

    #[test]
    fn raw_bytes_split_on_their_length_prefixes() {
        let raw = TensorData::Bytes(vec!["ab".into(), String::new(), "c".into()]).to_le_bytes();
        assert_eq!(split_bytes(&raw).unwrap(), vec![&b"ab"[..], &b""[..], &b"c"[..]]);
        assert!(split_bytes(&[1, 0, 0]).is_err());
        assert!(split_bytes(&[5, 0, 0, 0, b'a']).is_err());
    }
}
