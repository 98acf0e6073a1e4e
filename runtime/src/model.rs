//! ONNX Runtime: loading the library, building sessions, reading the model's signature, and
//! running inference on typed tensors.

use std::{path::Path, sync::Arc};

use ort::{
    environment::Environment,
    session::{Session, SessionInputValue, builder::GraphOptimizationLevel},
    value::{DynValue, Tensor as OrtTensor, TensorElementType, ValueType},
};

use crate::tensor::{DataType, Tensor, TensorData};

/// Failure to load the library or the model; each message is meant for the user as is.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "ONNX Runtime library not found at {0}; run `make setup-ort` (scripts/install-onnxruntime.sh) and set ORT_DYLIB_PATH to the libonnxruntime.so.* it installs"
    )]
    LibraryMissing(String),
    #[error(
        "ORT_DYLIB_PATH is not set; run `make setup-ort` (scripts/install-onnxruntime.sh) and point ORT_DYLIB_PATH at the libonnxruntime.so.* it installs"
    )]
    LibraryUnset,
    #[error("cannot load ONNX Runtime from {path}: {message}")]
    Library { path: String, message: String },
    #[error("{uri} is not a valid ONNX model: {message}")]
    NotOnnx { uri: String, message: String },
    #[error("{0}")]
    Unsupported(String),
}

/// Loads the ONNX Runtime shared library named by `ORT_DYLIB_PATH` and creates the environment.
pub fn init_onnxruntime() -> Result<Environment, LoadError> {
    let path = std::env::var("ORT_DYLIB_PATH").map_err(|_| LoadError::LibraryUnset)?;
    if path.is_empty() {
        return Err(LoadError::LibraryUnset);
    }
    if !Path::new(&path).is_file() {
        return Err(LoadError::LibraryMissing(path));
    }
    let builder =
        ort::init_from(&path).map_err(|e| LoadError::Library { path: path.clone(), message: e.to_string() })?;
    builder.with_name("kinfer").build().map_err(|e| LoadError::Library { path, message: e.to_string() })
}

/// One input or output of the model, as the protocols describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub datatype: DataType,
    /// Dimensions; -1 where dynamic.
    pub shape: Vec<i64>,
}

/// The model's signature and what the protocols need to know about it.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub name: String,
    pub version: String,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    /// Class labels read from the model (scikit-learn classifiers), in probability-column order.
    pub class_labels: Option<Vec<String>>,
}

impl ModelInfo {
    /// True when every input's first dimension is dynamic: rows of requests can be concatenated.
    pub fn has_dynamic_batch(&self) -> bool {
        !self.inputs.is_empty() && self.inputs.iter().all(|i| i.shape.first() == Some(&-1))
    }

    pub fn input(&self, name: &str) -> Option<(usize, &TensorSpec)> {
        self.inputs.iter().enumerate().find(|(_, s)| s.name == name)
    }

    /// The outputs that make this a classifier for /predict: a label (1-D) and probabilities (2-D).
    pub fn classifier_outputs(&self) -> Option<(usize, usize)> {
        let label = self.outputs.iter().position(|o| o.name.contains("label") && o.shape.len() == 1)?;
        let probs = self
            .outputs
            .iter()
            .position(|o| (o.name.contains("probab") || o.name.contains("score")) && o.shape.len() == 2)?;
        Some((label, probs))
    }
}

fn datatype_of(ty: TensorElementType) -> Option<DataType> {
    Some(match ty {
        TensorElementType::Bool => DataType::Bool,
        TensorElementType::Uint8 => DataType::U8,
        TensorElementType::Int8 => DataType::I8,
        TensorElementType::Uint16 => DataType::U16,
        TensorElementType::Int16 => DataType::I16,
        TensorElementType::Uint32 => DataType::U32,
        TensorElementType::Int32 => DataType::I32,
        TensorElementType::Uint64 => DataType::U64,
        TensorElementType::Int64 => DataType::I64,
        TensorElementType::Float32 => DataType::F32,
        TensorElementType::Float64 => DataType::F64,
        TensorElementType::String => DataType::Bytes,
        _ => return None,
    })
}

fn spec_of(kind: &str, name: &str, ty: &ValueType) -> Result<TensorSpec, LoadError> {
    match ty {
        ValueType::Tensor { ty, shape, .. } => {
            let datatype = datatype_of(*ty).ok_or_else(|| {
                LoadError::Unsupported(format!(
                    "{kind} '{name}' has element type {ty:?}, which kinfer does not serve; export the model with one of BOOL, (U)INT8/16/32/64, FP32, FP64 or string tensors"
                ))
            })?;
            Ok(TensorSpec { name: name.to_string(), datatype, shape: shape.iter().copied().collect() })
        }
        ValueType::Sequence(inner) if matches!(**inner, ValueType::Map { .. }) => Err(LoadError::Unsupported(format!(
            "{kind} '{name}' is a ZipMap (a sequence of maps), which kinfer does not serve; export the model with the ZipMap disabled, e.g. skl2onnx `to_onnx(model, ..., options={{id(model): {{'zipmap': False}}}})` or onnxmltools with `zipmap=False`, so probabilities come out as a tensor"
        ))),
        other => Err(LoadError::Unsupported(format!(
            "{kind} '{name}' is a {other:?}, not a tensor; kinfer serves tensor inputs and outputs only"
        ))),
    }
}

/// Session settings.
#[derive(Debug, Clone, Copy)]
pub struct SessionOptions {
    pub intra_threads: usize,
}

/// Builds a session from the model bytes.
pub fn build_session(env: &Environment, uri: &str, bytes: &[u8], opts: SessionOptions) -> Result<Session, LoadError> {
    let not_onnx = |message: String| LoadError::NotOnnx { uri: uri.to_string(), message };
    if bytes.is_empty() {
        return Err(not_onnx("the file is empty".into()));
    }
    let mut builder = Session::builder(env)
        .and_then(|b| Ok(b.with_optimization_level(GraphOptimizationLevel::Level3)?))
        .and_then(|b| Ok(b.with_intra_threads(opts.intra_threads.max(1))?))
        .and_then(|b| Ok(b.with_inter_threads(1)?))
        // Spinning intra-op threads steal CPU from the HTTP workers on small machines.
        .and_then(|b| Ok(b.with_config_entry("session.intra_op.allow_spinning", "0")?))
        .map_err(|e| LoadError::Library { path: "session builder".into(), message: e.to_string() })?;
    builder.commit_from_memory(bytes).map_err(|e| not_onnx(e.to_string()))
}

/// Reads the signature of a session.
pub fn model_info(session: &Session, name: &str, version: &str, bytes: &[u8]) -> Result<ModelInfo, LoadError> {
    let inputs =
        session.inputs().iter().map(|o| spec_of("input", o.name(), o.dtype())).collect::<Result<Vec<_>, _>>()?;
    let outputs =
        session.outputs().iter().map(|o| spec_of("output", o.name(), o.dtype())).collect::<Result<Vec<_>, _>>()?;
    if inputs.is_empty() {
        return Err(LoadError::Unsupported("the model has no inputs".into()));
    }
    Ok(ModelInfo {
        name: name.to_string(),
        version: version.to_string(),
        inputs,
        outputs,
        class_labels: crate::onnx_labels::class_labels(bytes),
    })
}

fn to_ort(t: &Tensor) -> ort::Result<SessionInputValue<'static>> {
    let shape = t.shape.clone();
    macro_rules! owned {
        ($v:expr) => {
            OrtTensor::from_array((shape, $v.clone()))?.into_dyn().into()
        };
    }
    Ok(match &t.data {
        TensorData::Bool(v) => owned!(v),
        TensorData::U8(v) => owned!(v),
        TensorData::I8(v) => owned!(v),
        TensorData::U16(v) => owned!(v),
        TensorData::I16(v) => owned!(v),
        TensorData::U32(v) => owned!(v),
        TensorData::I32(v) => owned!(v),
        TensorData::U64(v) => owned!(v),
        TensorData::I64(v) => owned!(v),
        TensorData::F32(v) => owned!(v),
        TensorData::F64(v) => owned!(v),
        TensorData::Bytes(v) => OrtTensor::from_string_array((shape, v.as_slice()))?.into_dyn().into(),
    })
}

fn from_ort(name: &str, spec: DataType, value: &DynValue) -> ort::Result<Tensor> {
    macro_rules! ext {
        ($t:ty, $variant:ident) => {{
            let (shape, data) = value.try_extract_tensor::<$t>()?;
            (shape.to_vec(), TensorData::$variant(data.to_vec()))
        }};
    }
    let (shape, data) = match spec {
        DataType::Bool => ext!(bool, Bool),
        DataType::U8 => ext!(u8, U8),
        DataType::I8 => ext!(i8, I8),
        DataType::U16 => ext!(u16, U16),
        DataType::I16 => ext!(i16, I16),
        DataType::U32 => ext!(u32, U32),
        DataType::I32 => ext!(i32, I32),
        DataType::U64 => ext!(u64, U64),
        DataType::I64 => ext!(i64, I64),
        DataType::F32 => ext!(f32, F32),
        DataType::F64 => ext!(f64, F64),
        DataType::Bytes => {
            let (shape, data) = value.try_extract_strings()?;
            (shape.to_vec(), TensorData::Bytes(data))
        }
    };
    Ok(Tensor { name: name.to_string(), shape, data })
}

/// Runs the session on inputs given in the model's input order; returns every output.
pub fn run(session: &mut Session, info: &ModelInfo, inputs: &[Tensor]) -> Result<Vec<Tensor>, String> {
    let values: Vec<(String, SessionInputValue<'static>)> = inputs
        .iter()
        .map(|t| to_ort(t).map(|v| (t.name.clone(), v)))
        .collect::<ort::Result<_>>()
        .map_err(|e| e.to_string())?;
    let outputs = session.run(values).map_err(|e| e.to_string())?;
    info.outputs
        .iter()
        .map(|spec| {
            let value =
                outputs.get(&spec.name).ok_or_else(|| format!("output '{}' missing from the run", spec.name))?;
            from_ort(&spec.name, spec.datatype, value).map_err(|e| e.to_string())
        })
        .collect()
}

/// Inputs for the warm-up run: zeros, with every dynamic dimension set to 1.
pub fn warmup_inputs(info: &ModelInfo) -> Vec<Tensor> {
    info.inputs
        .iter()
        .map(|s| {
            let shape: Vec<i64> = s.shape.iter().map(|d| if *d < 0 { 1 } else { *d }).collect();
            let n = crate::tensor::element_count(&shape).unwrap_or(1);
            Tensor { name: s.name.clone(), shape, data: TensorData::zeros(s.datatype, n) }
        })
        .collect()
}

/// A loaded model: its signature plus sessions; shared by the inference workers.
pub struct LoadedModel {
    pub info: Arc<ModelInfo>,
    pub sessions: Vec<Session>,
}
