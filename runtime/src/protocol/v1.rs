//! KServe V1 (`{"instances": [...]}` → `{"predictions": [...]}`) and the plain `/predict`.
//!
//! Each instance is one row: an array (or scalar) for a single-input model, or an object
//! `{input_name: value}` for any model. Rows are decoded straight into one typed buffer per input.

use serde::{Deserialize, Serialize, Serializer, ser::SerializeMap};
use serde_json::value::RawValue;

use super::{Limits, Nested, SeqOf, check_inputs, row, shape_str, too_many_rows};
use crate::{
    error::ApiError,
    model::ModelInfo,
    tensor::{DecodeSeed, ShapeTracker, Tensor, TensorData, decode_json_into},
};

#[derive(Deserialize)]
struct InstancesJson<'a> {
    #[serde(borrow)]
    instances: Vec<&'a RawValue>,
}

/// Decodes `{"instances": [...]}` into the model's inputs, in the model's order.
pub fn decode(body: &[u8], info: &ModelInfo, limits: Limits) -> Result<Vec<Tensor>, ApiError> {
    match decode_one_pass(body, info, limits) {
        Some(tensors) => Ok(tensors),
        None => decode_two_pass(body, info, limits),
    }
}

/// The one-pass decoder, for a single-input model whose rows are arrays or scalars (what the
/// V1 clients send): each row is decoded straight into the input's typed buffer while the body
/// is parsed, with no raw pre-scan of the rows. `None` when the body needs the general decoder
/// (object rows, several inputs) or is refused: the general decoder then answers, so the error
/// messages are its own.
fn decode_one_pass(body: &[u8], info: &ModelInfo, limits: Limits) -> Option<Vec<Tensor>> {
    let [spec] = info.inputs.as_slice() else { return None };
    let per_row = spec.shape.iter().skip(1).map(|d| (*d).max(1) as usize).fold(1usize, usize::saturating_mul);
    let mut data = TensorData::empty(spec.datatype, per_row.min(body.len() / 2 + 1));
    let mut rows = Rows { out: &mut data, row_shape: None, n: 0, max_rows: limits.max_rows, limit: body.len() };
    let mut de = serde_json::Deserializer::from_slice(body);
    serde::de::DeserializeSeed::deserialize(Instances(&mut rows), &mut de).ok()?;
    de.end().ok()?;
    let (n, row_shape) = (rows.n, rows.row_shape.take()?);
    if n == 0 || row_shape.len() + 1 != spec.shape.len() {
        return None;
    }
    let mut shape = Vec::with_capacity(spec.shape.len());
    shape.push(n as i64);
    shape.extend(row_shape);
    check_inputs(info, vec![Tensor { name: spec.name.clone(), shape, data }], limits).ok()
}

/// `{"instances": [...]}` for [`decode_one_pass`]; other keys are skipped, as the general
/// decoder skips them.
struct Instances<'r, 'o>(&'r mut Rows<'o>);

/// The rows decoded so far into one buffer, and the shape every row must share.
struct Rows<'o> {
    out: &'o mut TensorData,
    row_shape: Option<Vec<i64>>,
    n: usize,
    max_rows: usize,
    limit: usize,
}

impl<'de> serde::de::DeserializeSeed<'de> for Instances<'_, '_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Instances<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("{\"instances\": [...]}")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        use serde::de::Error;
        let mut seen = false;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if key != "instances" {
                map.next_value::<serde::de::IgnoredAny>()?;
            } else if seen {
                return Err(A::Error::duplicate_field("instances"));
            } else {
                seen = true;
                map.next_value_seed(RowList(&mut *self.0))?;
            }
        }
        if seen { Ok(()) } else { Err(A::Error::missing_field("instances")) }
    }
}

struct RowList<'r, 'o>(&'r mut Rows<'o>);

impl<'de> serde::de::DeserializeSeed<'de> for RowList<'_, '_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> serde::de::Visitor<'de> for RowList<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an array of instances")
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        use serde::de::Error;
        let rows = self.0;
        loop {
            let mut tracker = ShapeTracker::default();
            let seed = DecodeSeed { out: &mut *rows.out, shape: &mut tracker, limit: rows.limit };
            if seq.next_element_seed(seed)?.is_none() {
                return Ok(());
            }
            let shape = tracker.shape();
            match &rows.row_shape {
                None => rows.row_shape = Some(shape),
                Some(first) if *first != shape => return Err(A::Error::custom("rows differ in shape")),
                Some(_) => {}
            }
            rows.n += 1;
            if rows.n > rows.max_rows {
                // Over the limit: the general decoder names it.
                return Err(A::Error::custom("too many rows"));
            }
        }
    }
}

/// The general decoder: rows are scanned as raw JSON first, then each input's values are
/// decoded row by row. Object rows and several inputs go through it, and every refused body
/// (its errors are the ones users see); also the reference the one-pass decoder is tested
/// against.
#[doc(hidden)]
pub fn decode_two_pass(body: &[u8], info: &ModelInfo, limits: Limits) -> Result<Vec<Tensor>, ApiError> {
    let req: InstancesJson<'_> =
        serde_json::from_slice(body).map_err(|e| ApiError::invalid(format!("invalid request JSON: {e}")))?;
    let n = req.instances.len();
    if n == 0 {
        return Err(ApiError::invalid("'instances' is empty; send at least one row"));
    }
    if n > limits.max_rows {
        return Err(too_many_rows(n, limits.max_rows));
    }
    // Object rows name their inputs; array rows are the single input's values.
    let object_rows: Vec<Option<std::collections::HashMap<&str, &RawValue>>> = req
        .instances
        .iter()
        .enumerate()
        .map(|(i, raw)| {
            if raw.get().trim_start().starts_with('{') {
                serde_json::from_str(raw.get()).map(Some).map_err(|e| ApiError::invalid(format!("instances[{i}]: {e}")))
            } else {
                Ok(None)
            }
        })
        .collect::<Result<_, _>>()?;
    if info.inputs.len() > 1 && object_rows.iter().any(Option::is_none) {
        let names: Vec<&str> = info.inputs.iter().map(|s| s.name.as_str()).collect();
        return Err(ApiError::invalid(format!(
            "the model has several inputs {names:?}; each instance must be an object naming them"
        )));
    }
    let mut tensors = Vec::with_capacity(info.inputs.len());
    for spec in &info.inputs {
        // Reserve what the rows should need, but never more than the body could hold (two
        // bytes of JSON per element at least): the model's shape is no promise of the data.
        let per_row = spec.shape.iter().skip(1).map(|d| (*d).max(1) as usize).fold(1usize, usize::saturating_mul);
        let mut data = TensorData::empty(spec.datatype, n.saturating_mul(per_row).min(body.len() / 2 + 1));
        let mut row_shape: Option<Vec<i64>> = None;
        for (i, raw) in req.instances.iter().enumerate() {
            let value = match &object_rows[i] {
                Some(obj) => *obj.get(spec.name.as_str()).ok_or_else(|| {
                    ApiError::invalid(format!("instances[{i}] has no value for input '{}'", spec.name))
                })?,
                None => *raw,
            };
            let mut tracker = ShapeTracker::default();
            decode_json_into(value.get(), &mut data, &mut tracker, body.len())
                .map_err(|e| ApiError::invalid(format!("instances[{i}] (input '{}'): {}", spec.name, e.0)))?;
            let shape = tracker.shape();
            match &row_shape {
                None => row_shape = Some(shape),
                Some(first) if *first != shape => {
                    return Err(ApiError::invalid(format!(
                        "instances[{i}] has shape {} but instances[0] has {} (input '{}')",
                        shape_str(&shape),
                        shape_str(first),
                        spec.name
                    )));
                }
                _ => {}
            }
        }
        let mut shape = vec![n as i64];
        shape.extend(row_shape.unwrap_or_default());
        if shape.len() != spec.shape.len() {
            let want = shape_str(spec.shape.get(1..).unwrap_or(&[]));
            return Err(ApiError::invalid(format!(
                "each instance for input '{}' must have shape {want}, got {}",
                spec.name,
                shape_str(&shape[1..])
            )));
        }
        tensors.push(Tensor { name: spec.name.clone(), shape, data });
    }
    if let Some(obj) = object_rows.iter().flatten().next()
        && let Some(unknown) = obj.keys().find(|k| info.input(k).is_none())
    {
        return Err(ApiError::invalid(format!("unknown input '{unknown}' in instances")));
    }
    check_inputs(info, tensors, limits)
}

/// True when every output has the batch as its first dimension.
fn rowwise(outputs: &[Tensor], n: usize) -> bool {
    outputs.iter().all(|t| t.shape.first() == Some(&(n as i64)))
}

/// One row of several outputs as `{name: value}`; single-element rows become scalars when `unwrap`.
struct RowObject<'a> {
    outputs: &'a [Tensor],
    i: usize,
    unwrap: bool,
}

impl Serialize for RowObject<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.outputs.len()))?;
        for t in self.outputs {
            let r = row(t, self.i);
            if self.unwrap && r.shape.iter().product::<i64>() == 1 {
                map.serialize_entry(&t.name, &Nested { data: r.data, start: r.start, shape: &[] })?;
            } else {
                map.serialize_entry(&t.name, &r)?;
            }
        }
        map.end()
    }
}

/// Whole tensors as `{name: nested value}` (outputs without a batch dimension).
struct Whole<'a>(&'a [Tensor]);

impl Serialize for Whole<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for t in self.0 {
            map.serialize_entry(&t.name, &Nested { data: &t.data, start: 0, shape: &t.shape })?;
        }
        map.end()
    }
}

/// `{"predictions": [...]}`: one entry per row; the row's value for a single-output model,
/// `{output: value}` otherwise.
pub fn encode_v1(outputs: &[Tensor], n: usize) -> Vec<u8> {
    #[derive(Serialize)]
    struct Resp<T: Serialize> {
        predictions: T,
    }
    let mut body = Vec::with_capacity(64 + 16 * n);
    let _ = if !rowwise(outputs, n) {
        serde_json::to_writer(&mut body, &Resp { predictions: [Whole(outputs)] })
    } else if outputs.len() == 1 {
        serde_json::to_writer(&mut body, &Resp { predictions: SeqOf(n, |i| row(&outputs[0], i)) })
    } else {
        serde_json::to_writer(&mut body, &Resp { predictions: SeqOf(n, |i| RowObject { outputs, i, unwrap: false }) })
    };
    body
}

/// A classifier's row: label, and probabilities keyed by class label when the model names them.
struct ClassRow<'a> {
    label: &'a Tensor,
    probs: &'a Tensor,
    classes: Option<&'a [String]>,
    i: usize,
    threshold: Option<f64>,
}

struct Probabilities<'a> {
    probs: &'a Tensor,
    classes: Option<&'a [String]>,
    i: usize,
}

impl Serialize for Probabilities<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let r = row(self.probs, self.i);
        match self.classes {
            Some(classes) if classes.len() as i64 == r.shape.first().copied().unwrap_or(-1) => {
                let mut map = s.serialize_map(Some(classes.len()))?;
                for (k, class) in classes.iter().enumerate() {
                    map.serialize_entry(class, &Nested { data: r.data, start: r.start + k, shape: &[] })?;
                }
                map.end()
            }
            _ => r.serialize(s),
        }
    }
}

impl Serialize for ClassRow<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("label", &row(self.label, self.i))?;
        map.serialize_entry("probabilities", &Probabilities { probs: self.probs, classes: self.classes, i: self.i })?;
        if let Some(t) = self.threshold {
            // Binary classifiers: the positive class is the last probability column.
            let r = row(self.probs, self.i);
            let cols = r.shape.first().copied().unwrap_or(0).max(0) as usize;
            if cols == 2
                && let Some(p) = r.data.get_f64(r.start + 1)
            {
                map.serialize_entry("score", &p)?;
                map.serialize_entry("decision", &(p >= t))?;
            }
        }
        map.end()
    }
}

/// Options of `/predict`.
#[derive(Debug, Clone, Copy, Default)]
pub struct PredictOptions {
    pub threshold: Option<f64>,
}

/// `/predict`: `{"model_name", "model_version", "predictions": [...]}`; for classifiers each
/// prediction is `{"label", "probabilities"}`, otherwise `{output: value}`.
pub fn encode_predict(info: &ModelInfo, outputs: &[Tensor], n: usize, opts: PredictOptions) -> Vec<u8> {
    #[derive(Serialize)]
    struct Resp<'a, T: Serialize> {
        model_name: &'a str,
        model_version: &'a str,
        predictions: T,
    }
    let mut body = Vec::with_capacity(96 + 48 * n);
    let (name, version) = (info.name.as_str(), info.version.as_str());
    let _ = match info.classifier_outputs() {
        Some((l, p)) if rowwise(outputs, n) => {
            let (label, probs) = (&outputs[l], &outputs[p]);
            let classes = info.class_labels.as_deref();
            let predictions = SeqOf(n, |i| ClassRow { label, probs, classes, i, threshold: opts.threshold });
            serde_json::to_writer(&mut body, &Resp { model_name: name, model_version: version, predictions })
        }
        _ if rowwise(outputs, n) => {
            let predictions = SeqOf(n, |i| RowObject { outputs, i, unwrap: true });
            serde_json::to_writer(&mut body, &Resp { model_name: name, model_version: version, predictions })
        }
        _ => serde_json::to_writer(
            &mut body,
            &Resp { model_name: name, model_version: version, predictions: [Whole(outputs)] },
        ),
    };
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Iris with its class names (V1 answers them as labels).
    fn iris() -> ModelInfo {
        ModelInfo {
            class_labels: Some(vec!["setosa".into(), "versicolor".into(), "virginica".into()]),
            ..super::super::v2::tests::iris()
        }
    }
    const LIMITS: Limits = Limits { max_rows: 3 };

    #[test]
    fn array_and_object_rows() {
        let a = decode(br#"{"instances":[[1,2,3,4],[5,6,7,8]]}"#, &iris(), LIMITS).unwrap();
        let b = decode(br#"{"instances":[{"input":[1,2,3,4]},{"input":[5,6,7,8]}]}"#, &iris(), LIMITS).unwrap();
        assert_eq!(a, b);
        assert_eq!(a[0].shape, vec![2, 4]);
    }

    #[test]
    fn row_errors_name_the_row() {
        let e = decode(br#"{"instances":[[1,2,3,4],[5,6,7]]}"#, &iris(), LIMITS).unwrap_err().message;
        assert!(e.contains("instances[1] has shape [3] but instances[0] has [4]"), "{e}");
        let e = decode(br#"{"instances":[[1,2,"x",4]]}"#, &iris(), LIMITS).unwrap_err().message;
        assert!(e.contains("instances[0] (input 'input'): element 2 is the string \"x\""), "{e}");
        let e = decode(br#"{"instances":[1,2,3]}"#, &iris(), LIMITS).unwrap_err().message;
        assert!(e.contains("must have shape [4]"), "{e}");
        let e =
            decode(br#"{"instances":[[1,2,3,4],[1,2,3,4],[1,2,3,4],[1,2,3,4]]}"#, &iris(), LIMITS).unwrap_err().message;
        assert!(e.contains("batch of 4 rows exceeds the limit of 3"), "{e}");
        let e = decode(br#"{"instances":[]}"#, &iris(), LIMITS).unwrap_err().message;
        assert!(e.contains("empty"), "{e}");
        let e = decode(br#"{"rows":[]}"#, &iris(), LIMITS).unwrap_err().message;
        assert!(e.contains("missing field `instances`"), "{e}");
    }

    #[test]
    fn one_pass_and_two_pass_decoders_agree() {
        let bodies: [&[u8]; 12] = [
            br#"{"instances":[[1,2,3,4],[5,6,7,8]]}"#,
            br#"{"x":[1],"instances":[[1,2,3,4]],"y":{"z":2}}"#,
            br#"{"instances":[{"input":[1,2,3,4]}]}"#,
            br#"{"instances":[[1,2,3,4],[5,6,7]]}"#,
            br#"{"instances":[[1,2,3,4],[[5,6,7,8]]]}"#,
            br#"{"instances":[[1,2,"x",4]]}"#,
            br#"{"instances":[1,2,3]}"#,
            br#"{"instances":[[1,2,3,4],[1,2,3,4],[1,2,3,4],[1,2,3,4]]}"#,
            br#"{"instances":[[1,2,3,4],[1,2,3,4],[1,2,3,4]]}"#,
            br#"{"instances":[]}"#,
            br#"{"instances":[[1,2,3,4]],"instances":[[1,2,3,4]]}"#,
            br#"{"instances":[[1,2,3,4]]} x"#,
        ];
        for body in bodies {
            let one = decode(body, &iris(), LIMITS);
            assert_eq!(one, decode_two_pass(body, &iris(), LIMITS), "{}", String::from_utf8_lossy(body));
        }
        assert!(decode_one_pass(bodies[0], &iris(), LIMITS).is_some());
        assert!(decode_one_pass(bodies[8], &iris(), LIMITS).is_some(), "exactly the row limit");
        assert!(decode_one_pass(bodies[7], &iris(), LIMITS).is_none(), "over the row limit");
    }

    #[test]
    fn predict_names_classes() {
        let outs = vec![
            Tensor { name: "label".into(), shape: vec![1], data: TensorData::I64(vec![2]) },
            Tensor { name: "probabilities".into(), shape: vec![1, 3], data: TensorData::F32(vec![0.1, 0.2, 0.7]) },
        ];
        let body = encode_predict(&iris(), &outs, 1, PredictOptions::default());
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["predictions"][0]["label"], 2);
        assert_eq!(v["predictions"][0]["probabilities"]["virginica"].as_f64().unwrap() as f32, 0.7f32);
        let v1: serde_json::Value = serde_json::from_slice(&encode_v1(&outs, 1)).unwrap();
        assert_eq!(v1["predictions"][0]["label"], 2);
        assert_eq!(v1["predictions"][0]["probabilities"].as_array().unwrap().len(), 3);
    }
}
