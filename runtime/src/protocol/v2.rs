//! Open Inference Protocol v2 (KServe / Triton / MLServer) REST codec, including Triton's binary
//! tensor extension (`Inference-Header-Content-Length`, `binary_data_size`, `binary_data`).

use serde::{
    Deserialize, Serialize,
    de::{MapAccess, Visitor},
};
use serde_json::value::RawValue;

use super::{Limits, check_inputs, input_header, shape_str};
use crate::{
    error::ApiError,
    model::{ModelInfo, TensorSpec},
    tensor::{DataType, DecodeSeed, ShapeTracker, Tensor, TensorData, decode_json_into, element_count},
};

/// The header naming the length of the JSON part of a body that carries binary tensors.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// The platform named in model metadata (Triton's name for ONNX Runtime models).
pub const PLATFORM: &str = "onnxruntime_onnx";

/// The request body's JSON. `I` is how each input is parsed: [`InputJson`] in one pass, or
/// [`RawInputJson`] in two.
#[derive(Deserialize)]
struct RequestJson<I> {
    #[serde(default)]
    id: Option<String>,
    inputs: Vec<I>,
    #[serde(default)]
    outputs: Option<Vec<OutputJson>>,
    #[serde(default)]
    parameters: Option<RequestParams>,
}

/// One input, parsed in one pass: when its `datatype` and `shape` come before `data` (as every
/// client library sends them) the values are decoded straight into the typed buffer while the
/// body is parsed; otherwise `data` is kept as raw JSON and decoded once the header is known.
/// Any error makes [`decode_with_images`] parse the body again with [`RawInputJson`], whose
/// messages are the ones users see, so both parses answer every request the same.
struct InputJson<'a> {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    data: Option<DataJson<'a>>,
    parameters: Option<InputParams>,
}

/// An input's `data`: decoded already, or its raw JSON.
enum DataJson<'a> {
    Decoded(TensorData),
    Raw(&'a RawValue),
}

/// One input, parsed in two passes: `data` is only scanned as raw JSON here and decoded
/// afterwards. The reference for [`InputJson`], and the parse whose errors users see.
#[derive(Deserialize)]
struct RawInputJson<'a> {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    #[serde(default)]
    parameters: Option<InputParams>,
}

impl<'a> From<RawInputJson<'a>> for InputJson<'a> {
    fn from(r: RawInputJson<'a>) -> Self {
        InputJson {
            name: r.name,
            shape: r.shape,
            datatype: r.datatype,
            data: r.data.map(DataJson::Raw),
            parameters: r.parameters,
        }
    }
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum InputField {
    Name,
    Shape,
    Datatype,
    Data,
    Parameters,
    #[serde(other)]
    Other,
}

impl<'de: 'a, 'a> Deserialize<'de> for InputJson<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(InputVisitor(std::marker::PhantomData))
    }
}

struct InputVisitor<'a>(std::marker::PhantomData<&'a ()>);

/// Element capacity reserved up front for one-pass decoding; the buffer grows past it as values
/// arrive, so a claimed shape never reserves more than this.
const EAGER_RESERVE: usize = 1 << 16;

impl<'de: 'a, 'a> Visitor<'de> for InputVisitor<'a> {
    type Value = InputJson<'a>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an input tensor object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<InputJson<'a>, A::Error> {
        use serde::de::Error;
        let (mut name, mut shape, mut datatype) = (None::<String>, None::<Vec<i64>>, None::<String>);
        let mut data = None::<Option<DataJson<'a>>>;
        let mut parameters = None::<Option<InputParams>>;
        while let Some(key) = map.next_key::<InputField>()? {
            match key {
                InputField::Name if name.is_none() => name = Some(map.next_value()?),
                InputField::Shape if shape.is_none() => shape = Some(map.next_value()?),
                InputField::Datatype if datatype.is_none() => datatype = Some(map.next_value()?),
                InputField::Parameters if parameters.is_none() => parameters = Some(map.next_value()?),
                InputField::Data if data.is_none() => {
                    let binary =
                        parameters.as_ref().is_some_and(|p| p.as_ref().is_some_and(|p| p.binary_data_size.is_some()));
                    let header = datatype
                        .as_deref()
                        .and_then(DataType::from_oip)
                        .zip(shape.as_deref().and_then(element_count))
                        .filter(|_| !binary);
                    data = Some(match header {
                        Some((dt, count)) => {
                            let mut out = TensorData::empty(dt, count.min(EAGER_RESERVE));
                            let mut tracker = ShapeTracker::default();
                            map.next_value_seed(DecodeSeed { out: &mut out, shape: &mut tracker, limit: count })?;
                            Some(DataJson::Decoded(out))
                        }
                        None => map.next_value::<Option<&'de RawValue>>()?.map(DataJson::Raw),
                    });
                }
                InputField::Other => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
                _ => return Err(A::Error::custom("duplicate field")),
            }
        }
        Ok(InputJson {
            name: name.ok_or_else(|| A::Error::missing_field("name"))?,
            shape: shape.ok_or_else(|| A::Error::missing_field("shape"))?,
            datatype: datatype.ok_or_else(|| A::Error::missing_field("datatype"))?,
            data: data.flatten(),
            parameters: parameters.flatten(),
        })
    }
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
#[derive(Debug, PartialEq)]
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
    decode_parsed(body, header_len, info, limits, images, parse)
}

/// [`decode`] through the two-pass parse only: the reference the fuzz test compares the
/// one-pass decoder with.
#[doc(hidden)]
pub fn decode_two_pass(
    body: &[u8],
    header_len: Option<usize>,
    info: &ModelInfo,
    limits: Limits,
) -> Result<InferRequest, ApiError> {
    decode_parsed(body, header_len, info, limits, None, parse_two_pass)
}

fn decode_parsed<'b>(
    body: &'b [u8],
    header_len: Option<usize>,
    info: &ModelInfo,
    limits: Limits,
    images: Option<&crate::image::Pipeline>,
    parse: fn(&'b [u8]) -> Result<RequestJson<InputJson<'b>>, ApiError>,
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
    let mut req = parse(json)?;
    if req.inputs.is_empty() {
        return Err(ApiError::invalid("'inputs' is empty; the model's inputs are required"));
    }
    let mut tensors = Vec::with_capacity(req.inputs.len());
    for (i, input) in req.inputs.iter_mut().enumerate() {
        let (field, dt, count) = input_header(info, i, &input.name, &input.datatype, &input.shape)?;
        let binary_size = input.parameters.as_ref().and_then(|p| p.binary_data_size);
        let data = match (binary_size, input.data.as_ref()) {
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
            (None, Some(DataJson::Decoded(_))) => match input.data.take() {
                Some(DataJson::Decoded(data)) => data,
                _ => TensorData::empty(dt, 0),
            },
            (None, Some(DataJson::Raw(raw))) => {
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
        tensors.push(Tensor { name: std::mem::take(&mut input.name), shape: std::mem::take(&mut input.shape), data });
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

/// Parses the JSON part in one pass, or, when that fails, in two: the two-pass parse gives the
/// error users see (or accepts what the one-pass parse refuses, e.g. a `data` it could not
/// decode that `binary_data_size` makes unused).
fn parse(json: &[u8]) -> Result<RequestJson<InputJson<'_>>, ApiError> {
    if let Ok(req) = serde_json::from_slice::<RequestJson<InputJson<'_>>>(json) {
        return Ok(req);
    }
    parse_two_pass(json)
}

/// The two-pass parse alone (also the reference the one-pass one is tested against).
fn parse_two_pass(json: &[u8]) -> Result<RequestJson<InputJson<'_>>, ApiError> {
    let req: RequestJson<RawInputJson<'_>> =
        serde_json::from_slice(json).map_err(|e| ApiError::invalid(format!("invalid inference request JSON: {e}")))?;
    Ok(RequestJson {
        id: req.id,
        inputs: req.inputs.into_iter().map(InputJson::from).collect(),
        outputs: req.outputs,
        parameters: req.parameters,
    })
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
    fn one_pass_and_two_pass_parses_agree() {
        let bodies = [
            // The header before the data (decoded in one pass), and after it (kept raw).
            r#"{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}],"id":"a"}"#,
            r#"{"inputs":[{"data":[[1,2,3,4]],"name":"input","shape":[1,4],"datatype":"FP32"}]}"#,
            r#"{"inputs":[{"name":"input","datatype":"FP32","data":[1,2,3,4],"shape":[1,4]}]}"#,
            // Unknown fields are skipped; null data is no data.
            r#"{"inputs":[{"name":"input","shape":[1,4],"x":{"y":[1]},"datatype":"FP32","data":[1,2,3,4]}],"z":1}"#,
            r#"{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":null}]}"#,
            // Refused in the one pass, answered by the two-pass parse.
            r#"{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[1,2,3,"x"]}]}"#,
            r#"{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[[1,2],[3]]}]}"#,
            r#"{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[1,2,3,4,5]}]}"#,
            r#"{"inputs":[{"name":"input","name":"input","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}"#,
            r#"{"inputs":[{"shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}"#,
            r#"{"inputs":[["input",[1,4],"FP32",[1,2,3,4]]]}"#,
            r#"{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP16","data":[1,2,3,4]}]}"#,
            r#"{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}"#,
        ];
        for body in bodies {
            let one = decode(body.as_bytes(), None, &iris(), LIMITS);
            assert_eq!(one, decode_two_pass(body.as_bytes(), None, &iris(), LIMITS), "{body}");
        }
        // data the one pass cannot decode, made unused by a later binary_data_size.
        let header = r#"{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":["x"],"parameters":{"binary_data_size":16}}]}"#;
        let mut body = header.as_bytes().to_vec();
        TensorData::F32(vec![1.0, 2.0, 3.0, 4.0]).write_le_bytes(&mut body);
        let req = decode(&body, Some(header.len()), &iris(), LIMITS).unwrap();
        assert_eq!(req.inputs[0].data, TensorData::F32(vec![1.0, 2.0, 3.0, 4.0]));
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
