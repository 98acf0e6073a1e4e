//! The request/response codecs of the protocols (OIP v2 REST and gRPC, KServe V1, /predict), and
//! the checks every request goes through against the model's signature.

pub mod grpc;
pub mod v1;
pub mod v2;

use serde::{Serialize, Serializer, ser::SerializeSeq};

use crate::{
    error::ApiError,
    model::{ModelInfo, TensorSpec},
    tensor::{DataType, Tensor, TensorData, element_count},
};

/// Limits applied while decoding.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_rows: usize,
}

/// Checks decoded tensors against the model: every input present once, datatypes and shapes as
/// declared, element counts consistent, rows within the limit. Returns them in the model's order.
pub fn check_inputs(info: &ModelInfo, mut given: Vec<Tensor>, limits: Limits) -> Result<Vec<Tensor>, ApiError> {
    for t in &given {
        if info.input(&t.name).is_none() {
            return Err(ApiError::invalid(format!(
                "unknown input '{}'; the model's inputs are {}",
                t.name,
                names(&info.inputs)
            )));
        }
    }
    let mut ordered = Vec::with_capacity(info.inputs.len());
    for spec in &info.inputs {
        let pos = given.iter().position(|t| t.name == spec.name).ok_or_else(|| {
            ApiError::invalid(format!("missing input '{}' ({} {})", spec.name, spec.datatype, shape_str(&spec.shape)))
        })?;
        let t = given.swap_remove(pos);
        if given.iter().any(|o| o.name == spec.name) {
            return Err(ApiError::invalid(format!("input '{}' is given more than once", spec.name)));
        }
        check_one(spec, &t, limits)?;
        ordered.push(t);
    }
    Ok(ordered)
}

fn check_one(spec: &TensorSpec, t: &Tensor, limits: Limits) -> Result<(), ApiError> {
    if t.datatype() != spec.datatype {
        return Err(ApiError::invalid(format!(
            "input '{}' has datatype {}, expected {}",
            spec.name,
            t.datatype(),
            spec.datatype
        )));
    }
    let fits = t.shape.len() == spec.shape.len()
        && t.shape.iter().zip(&spec.shape).all(|(got, want)| *got >= 0 && (*want < 0 || got == want));
    if !fits {
        return Err(ApiError::invalid(format!(
            "input '{}' has shape {}, expected {} (-1 = any size)",
            spec.name,
            shape_str(&t.shape),
            shape_str(&spec.shape)
        )));
    }
    let count = element_count(&t.shape).ok_or_else(|| {
        ApiError::invalid(format!("input '{}' shape {} is too large", spec.name, shape_str(&t.shape)))
    })?;
    if count != t.data.len() {
        return Err(ApiError::invalid(format!(
            "input '{}' has {} elements but shape {} needs {count}",
            spec.name,
            t.data.len(),
            shape_str(&t.shape)
        )));
    }
    if spec.shape.first() == Some(&-1)
        && let Some(rows) = t.shape.first()
        && *rows as usize > limits.max_rows
    {
        return Err(too_many_rows(*rows as usize, limits.max_rows));
    }
    Ok(())
}

/// The header of the `i`-th request input, checked the same way on every protocol: its field
/// name for messages (`inputs[i] ('name')`), its datatype, and its element count.
pub fn input_header(
    info: &ModelInfo,
    i: usize,
    name: &str,
    datatype: &str,
    shape: &[i64],
) -> Result<(String, DataType, usize), ApiError> {
    let field = format!("inputs[{i}] ('{name}')");
    let dt = DataType::from_oip(datatype).ok_or_else(|| {
        let expected = info.input(name).map(|(_, s)| s.datatype.oip_name()).unwrap_or("a tensor datatype");
        ApiError::invalid(format!("{field}: datatype {datatype:?} is not supported; expected {expected}"))
    })?;
    let count = element_count(shape)
        .ok_or_else(|| ApiError::invalid(format!("{field}: shape {} is not valid", shape_str(shape))))?;
    Ok((field, dt, count))
}

pub fn too_many_rows(rows: usize, max: usize) -> ApiError {
    ApiError::invalid(format!(
        "batch of {rows} rows exceeds the limit of {max} rows per request (KINFER_MAX_BATCH_ROWS)"
    ))
}

pub fn shape_str(shape: &[i64]) -> String {
    let dims: Vec<String> = shape.iter().map(i64::to_string).collect();
    format!("[{}]", dims.join(", "))
}

fn names(specs: &[TensorSpec]) -> String {
    let n: Vec<String> = specs.iter().map(|s| format!("'{}'", s.name)).collect();
    n.join(", ")
}

/// Serializes elements `[start, start + product(shape))` of `data` as nested JSON arrays
/// (a scalar when `shape` is empty), straight from the buffer.
pub struct Nested<'a> {
    pub data: &'a TensorData,
    pub start: usize,
    pub shape: &'a [i64],
}

impl Serialize for Nested<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let Some((first, rest)) = self.shape.split_first() else {
            return serialize_element(self.data, self.start, s);
        };
        let n = (*first).max(0) as usize;
        let stride = element_count(rest).unwrap_or(0);
        let mut seq = s.serialize_seq(Some(n))?;
        for i in 0..n {
            seq.serialize_element(&Nested { data: self.data, start: self.start + i * stride, shape: rest })?;
        }
        seq.end()
    }
}

pub fn serialize_element<S: Serializer>(data: &TensorData, i: usize, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::Error;
    let missing = || S::Error::custom("tensor element out of range");
    match data {
        TensorData::Bool(v) => v.get(i).ok_or_else(missing)?.serialize(s),
        TensorData::U8(v) => v.get(i).ok_or_else(missing)?.serialize(s),
        TensorData::I8(v) => v.get(i).ok_or_else(missing)?.serialize(s),
        TensorData::U16(v) => v.get(i).ok_or_else(missing)?.serialize(s),
        TensorData::I16(v) => v.get(i).ok_or_else(missing)?.serialize(s),
        TensorData::U32(v) => v.get(i).ok_or_else(missing)?.serialize(s),
        TensorData::I32(v) => v.get(i).ok_or_else(missing)?.serialize(s),
        TensorData::U64(v) => v.get(i).ok_or_else(missing)?.serialize(s),
        TensorData::I64(v) => v.get(i).ok_or_else(missing)?.serialize(s),
        TensorData::F32(v) => v.get(i).ok_or_else(missing)?.serialize(s),
        TensorData::F64(v) => v.get(i).ok_or_else(missing)?.serialize(s),
        TensorData::Bytes(v) => v.get(i).ok_or_else(missing)?.serialize(s),
    }
}

/// Row `i` of a tensor whose first dimension is the batch.
pub fn row(t: &Tensor, i: usize) -> Nested<'_> {
    let rest = t.shape.get(1..).unwrap_or(&[]);
    let stride = element_count(rest).unwrap_or(0);
    Nested { data: &t.data, start: i * stride, shape: rest }
}

/// Serializes a sequence lazily from an iterator-producing closure.
pub struct SeqOf<F>(pub usize, pub F);

impl<F, T> Serialize for SeqOf<F>
where
    F: Fn(usize) -> T,
    T: Serialize,
{
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0))?;
        for i in 0..self.0 {
            seq.serialize_element(&(self.1)(i))?;
        }
        seq.end()
    }
}
