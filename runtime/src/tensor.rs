//! Typed tensors and their decoding from JSON straight into typed buffers (no `serde_json::Value`
//! trees), plus the raw little-endian layout of the binary tensor extension.

use std::fmt;

use serde::{
    Serialize, Serializer,
    de::{self, DeserializeSeed, SeqAccess, Visitor},
};

/// Tensor element types, named as the Open Inference Protocol names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataType {
    Bool,
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F32,
    F64,
    Bytes,
}

impl DataType {
    pub const ALL: [DataType; 12] = [
        DataType::Bool,
        DataType::U8,
        DataType::I8,
        DataType::U16,
        DataType::I16,
        DataType::U32,
        DataType::I32,
        DataType::U64,
        DataType::I64,
        DataType::F32,
        DataType::F64,
        DataType::Bytes,
    ];

    pub fn oip_name(self) -> &'static str {
        match self {
            DataType::Bool => "BOOL",
            DataType::U8 => "UINT8",
            DataType::I8 => "INT8",
            DataType::U16 => "UINT16",
            DataType::I16 => "INT16",
            DataType::U32 => "UINT32",
            DataType::I32 => "INT32",
            DataType::U64 => "UINT64",
            DataType::I64 => "INT64",
            DataType::F32 => "FP32",
            DataType::F64 => "FP64",
            DataType::Bytes => "BYTES",
        }
    }

    pub fn from_oip(name: &str) -> Option<DataType> {
        DataType::ALL.into_iter().find(|d| d.oip_name() == name)
    }

    /// Size of one element in the binary extension; `None` for BYTES (length-prefixed).
    pub fn byte_size(self) -> Option<usize> {
        Some(match self {
            DataType::Bool | DataType::U8 | DataType::I8 => 1,
            DataType::U16 | DataType::I16 => 2,
            DataType::U32 | DataType::I32 | DataType::F32 => 4,
            DataType::U64 | DataType::I64 | DataType::F64 => 8,
            DataType::Bytes => return None,
        })
    }

    pub fn is_float(self) -> bool {
        matches!(self, DataType::F32 | DataType::F64)
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.oip_name())
    }
}

/// The elements of a tensor, row-major.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    Bool(Vec<bool>),
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    Bytes(Vec<String>),
}

/// Applies `$body` to the inner Vec of any variant, binding it as `$v`.
#[macro_export]
macro_rules! with_data {
    ($data:expr, $v:ident => $body:expr) => {
        match $data {
            $crate::tensor::TensorData::Bool($v) => $body,
            $crate::tensor::TensorData::U8($v) => $body,
            $crate::tensor::TensorData::I8($v) => $body,
            $crate::tensor::TensorData::U16($v) => $body,
            $crate::tensor::TensorData::I16($v) => $body,
            $crate::tensor::TensorData::U32($v) => $body,
            $crate::tensor::TensorData::I32($v) => $body,
            $crate::tensor::TensorData::U64($v) => $body,
            $crate::tensor::TensorData::I64($v) => $body,
            $crate::tensor::TensorData::F32($v) => $body,
            $crate::tensor::TensorData::F64($v) => $body,
            $crate::tensor::TensorData::Bytes($v) => $body,
        }
    };
}

impl TensorData {
    pub fn empty(dt: DataType, capacity: usize) -> TensorData {
        match dt {
            DataType::Bool => TensorData::Bool(Vec::with_capacity(capacity)),
            DataType::U8 => TensorData::U8(Vec::with_capacity(capacity)),
            DataType::I8 => TensorData::I8(Vec::with_capacity(capacity)),
            DataType::U16 => TensorData::U16(Vec::with_capacity(capacity)),
            DataType::I16 => TensorData::I16(Vec::with_capacity(capacity)),
            DataType::U32 => TensorData::U32(Vec::with_capacity(capacity)),
            DataType::I32 => TensorData::I32(Vec::with_capacity(capacity)),
            DataType::U64 => TensorData::U64(Vec::with_capacity(capacity)),
            DataType::I64 => TensorData::I64(Vec::with_capacity(capacity)),
            DataType::F32 => TensorData::F32(Vec::with_capacity(capacity)),
            DataType::F64 => TensorData::F64(Vec::with_capacity(capacity)),
            DataType::Bytes => TensorData::Bytes(Vec::with_capacity(capacity)),
        }
    }

    /// Zeros (empty strings for BYTES), used for the warm-up inference.
    pub fn zeros(dt: DataType, len: usize) -> TensorData {
        match dt {
            DataType::Bool => TensorData::Bool(vec![false; len]),
            DataType::U8 => TensorData::U8(vec![0; len]),
            DataType::I8 => TensorData::I8(vec![0; len]),
            DataType::U16 => TensorData::U16(vec![0; len]),
            DataType::I16 => TensorData::I16(vec![0; len]),
            DataType::U32 => TensorData::U32(vec![0; len]),
            DataType::I32 => TensorData::I32(vec![0; len]),
            DataType::U64 => TensorData::U64(vec![0; len]),
            DataType::I64 => TensorData::I64(vec![0; len]),
            DataType::F32 => TensorData::F32(vec![0.0; len]),
            DataType::F64 => TensorData::F64(vec![0.0; len]),
            DataType::Bytes => TensorData::Bytes(vec![String::new(); len]),
        }
    }

    pub fn datatype(&self) -> DataType {
        match self {
            TensorData::Bool(_) => DataType::Bool,
            TensorData::U8(_) => DataType::U8,
            TensorData::I8(_) => DataType::I8,
            TensorData::U16(_) => DataType::U16,
            TensorData::I16(_) => DataType::I16,
            TensorData::U32(_) => DataType::U32,
            TensorData::I32(_) => DataType::I32,
            TensorData::U64(_) => DataType::U64,
            TensorData::I64(_) => DataType::I64,
            TensorData::F32(_) => DataType::F32,
            TensorData::F64(_) => DataType::F64,
            TensorData::Bytes(_) => DataType::Bytes,
        }
    }

    pub fn len(&self) -> usize {
        with_data!(self, v => v.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Elements `[start, end)` as a new tensor buffer.
    pub fn slice(&self, start: usize, end: usize) -> TensorData {
        match self {
            TensorData::Bool(v) => TensorData::Bool(v[start..end].to_vec()),
            TensorData::U8(v) => TensorData::U8(v[start..end].to_vec()),
            TensorData::I8(v) => TensorData::I8(v[start..end].to_vec()),
            TensorData::U16(v) => TensorData::U16(v[start..end].to_vec()),
            TensorData::I16(v) => TensorData::I16(v[start..end].to_vec()),
            TensorData::U32(v) => TensorData::U32(v[start..end].to_vec()),
            TensorData::I32(v) => TensorData::I32(v[start..end].to_vec()),
            TensorData::U64(v) => TensorData::U64(v[start..end].to_vec()),
            TensorData::I64(v) => TensorData::I64(v[start..end].to_vec()),
            TensorData::F32(v) => TensorData::F32(v[start..end].to_vec()),
            TensorData::F64(v) => TensorData::F64(v[start..end].to_vec()),
            TensorData::Bytes(v) => TensorData::Bytes(v[start..end].to_vec()),
        }
    }

    /// Appends `other` (same datatype) to `self`; false when the datatypes differ.
    pub fn extend_from(&mut self, other: &TensorData) -> bool {
        match (self, other) {
            (TensorData::Bool(a), TensorData::Bool(b)) => a.extend_from_slice(b),
            (TensorData::U8(a), TensorData::U8(b)) => a.extend_from_slice(b),
            (TensorData::I8(a), TensorData::I8(b)) => a.extend_from_slice(b),
            (TensorData::U16(a), TensorData::U16(b)) => a.extend_from_slice(b),
            (TensorData::I16(a), TensorData::I16(b)) => a.extend_from_slice(b),
            (TensorData::U32(a), TensorData::U32(b)) => a.extend_from_slice(b),
            (TensorData::I32(a), TensorData::I32(b)) => a.extend_from_slice(b),
            (TensorData::U64(a), TensorData::U64(b)) => a.extend_from_slice(b),
            (TensorData::I64(a), TensorData::I64(b)) => a.extend_from_slice(b),
            (TensorData::F32(a), TensorData::F32(b)) => a.extend_from_slice(b),
            (TensorData::F64(a), TensorData::F64(b)) => a.extend_from_slice(b),
            (TensorData::Bytes(a), TensorData::Bytes(b)) => a.extend_from_slice(b),
            _ => return false,
        }
        true
    }

    /// Element `i` as an f64 (numeric types only).
    pub fn get_f64(&self, i: usize) -> Option<f64> {
        Some(match self {
            TensorData::Bool(v) => f64::from(u8::from(*v.get(i)?)),
            TensorData::U8(v) => f64::from(*v.get(i)?),
            TensorData::I8(v) => f64::from(*v.get(i)?),
            TensorData::U16(v) => f64::from(*v.get(i)?),
            TensorData::I16(v) => f64::from(*v.get(i)?),
            TensorData::U32(v) => f64::from(*v.get(i)?),
            TensorData::I32(v) => f64::from(*v.get(i)?),
            TensorData::U64(v) => *v.get(i)? as f64,
            TensorData::I64(v) => *v.get(i)? as f64,
            TensorData::F32(v) => f64::from(*v.get(i)?),
            TensorData::F64(v) => *v.get(i)?,
            TensorData::Bytes(_) => return None,
        })
    }

    /// Raw little-endian bytes for the binary extension (BYTES: 4-byte length prefix each).
    pub fn to_le_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_le_bytes(&mut out);
        out
    }

    pub fn write_le_bytes(&self, out: &mut Vec<u8>) {
        match self {
            TensorData::Bool(v) => out.extend(v.iter().map(|b| u8::from(*b))),
            TensorData::U8(v) => out.extend_from_slice(v),
            TensorData::I8(v) => out.extend(v.iter().map(|x| x.to_le_bytes()[0])),
            TensorData::U16(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            TensorData::I16(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            TensorData::U32(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            TensorData::I32(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            TensorData::U64(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            TensorData::I64(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            TensorData::F32(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            TensorData::F64(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            TensorData::Bytes(v) => v.iter().for_each(|s| {
                out.extend_from_slice(&(s.len() as u32).to_le_bytes());
                out.extend_from_slice(s.as_bytes());
            }),
        }
    }

    /// Decodes raw little-endian bytes of the binary extension.
    pub fn from_le_bytes(dt: DataType, raw: &[u8]) -> Result<TensorData, String> {
        fn chunks<const N: usize, T>(raw: &[u8], f: impl Fn([u8; N]) -> T) -> Result<Vec<T>, String> {
            if !raw.len().is_multiple_of(N) {
                return Err(format!("{} bytes is not a multiple of the element size {N}", raw.len()));
            }
            Ok(raw
                .chunks_exact(N)
                .map(|c| {
                    let mut a = [0u8; N];
                    a.copy_from_slice(c);
                    f(a)
                })
                .collect())
        }
        Ok(match dt {
            DataType::Bool => TensorData::Bool(raw.iter().map(|b| *b != 0).collect()),
            DataType::U8 => TensorData::U8(raw.to_vec()),
            DataType::I8 => TensorData::I8(raw.iter().map(|b| i8::from_le_bytes([*b])).collect()),
            DataType::U16 => TensorData::U16(chunks(raw, u16::from_le_bytes)?),
            DataType::I16 => TensorData::I16(chunks(raw, i16::from_le_bytes)?),
            DataType::U32 => TensorData::U32(chunks(raw, u32::from_le_bytes)?),
            DataType::I32 => TensorData::I32(chunks(raw, i32::from_le_bytes)?),
            DataType::U64 => TensorData::U64(chunks(raw, u64::from_le_bytes)?),
            DataType::I64 => TensorData::I64(chunks(raw, i64::from_le_bytes)?),
            DataType::F32 => TensorData::F32(chunks(raw, f32::from_le_bytes)?),
            DataType::F64 => TensorData::F64(chunks(raw, f64::from_le_bytes)?),
            DataType::Bytes => {
                let mut out = Vec::new();
                let mut rest = raw;
                while !rest.is_empty() {
                    if rest.len() < 4 {
                        return Err("truncated BYTES element length prefix".into());
                    }
                    let n = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                    rest = &rest[4..];
                    if rest.len() < n {
                        return Err(format!("BYTES element of {n} bytes runs past the end of the data"));
                    }
                    let s =
                        std::str::from_utf8(&rest[..n]).map_err(|_| "BYTES element is not valid UTF-8".to_string())?;
                    out.push(s.to_string());
                    rest = &rest[n..];
                }
                TensorData::Bytes(out)
            }
        })
    }
}

impl Serialize for TensorData {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        with_data!(self, v => v.serialize(s))
    }
}

/// A named tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<i64>,
    pub data: TensorData,
}

impl Tensor {
    pub fn datatype(&self) -> DataType {
        self.data.datatype()
    }
}

/// Product of a shape's dimensions; `None` when a dimension is negative or the product overflows.
pub fn element_count(shape: &[i64]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, d| usize::try_from(*d).ok().and_then(|d| acc.checked_mul(d)))
}

// ---------------------------------------------------------------------------------------------
// JSON decoding: flat or nested arrays, straight into a typed buffer.

/// What went wrong while decoding numbers; the caller adds which field it was.
#[derive(Debug)]
pub struct DecodeError(pub String);

trait Element: Sized {
    const DT: DataType;
    fn from_i64(v: i64) -> Option<Self>;
    fn from_u64(v: u64) -> Option<Self>;
    fn from_f64(v: f64) -> Option<Self>;
    fn from_bool(_: bool) -> Option<Self> {
        None
    }
    fn from_str(_: &str) -> Option<Self> {
        None
    }
}

macro_rules! int_element {
    ($t:ty, $dt:expr) => {
        impl Element for $t {
            const DT: DataType = $dt;
            fn from_i64(v: i64) -> Option<Self> {
                <$t>::try_from(v).ok()
            }
            fn from_u64(v: u64) -> Option<Self> {
                <$t>::try_from(v).ok()
            }
            fn from_f64(v: f64) -> Option<Self> {
                // Integral floats such as 3.0 are accepted; 1.5 is not.
                if v.fract() == 0.0 && v >= <$t>::MIN as f64 && v <= <$t>::MAX as f64 { Some(v as $t) } else { None }
            }
        }
    };
}
int_element!(u8, DataType::U8);
int_element!(i8, DataType::I8);
int_element!(u16, DataType::U16);
int_element!(i16, DataType::I16);
int_element!(u32, DataType::U32);
int_element!(i32, DataType::I32);
int_element!(u64, DataType::U64);
int_element!(i64, DataType::I64);

impl Element for f32 {
    const DT: DataType = DataType::F32;
    fn from_i64(v: i64) -> Option<Self> {
        Some(v as f32)
    }
    fn from_u64(v: u64) -> Option<Self> {
        Some(v as f32)
    }
    fn from_f64(v: f64) -> Option<Self> {
        Some(v as f32)
    }
}

impl Element for f64 {
    const DT: DataType = DataType::F64;
    fn from_i64(v: i64) -> Option<Self> {
        Some(v as f64)
    }
    fn from_u64(v: u64) -> Option<Self> {
        Some(v as f64)
    }
    fn from_f64(v: f64) -> Option<Self> {
        Some(v)
    }
}

impl Element for String {
    const DT: DataType = DataType::Bytes;
    fn from_i64(_: i64) -> Option<Self> {
        None
    }
    fn from_u64(_: u64) -> Option<Self> {
        None
    }
    fn from_f64(_: f64) -> Option<Self> {
        None
    }
    fn from_str(v: &str) -> Option<Self> {
        Some(v.to_string())
    }
}

impl Element for bool {
    const DT: DataType = DataType::Bool;
    fn from_i64(_: i64) -> Option<Self> {
        None
    }
    fn from_u64(_: u64) -> Option<Self> {
        None
    }
    fn from_f64(_: f64) -> Option<Self> {
        None
    }
    fn from_bool(v: bool) -> Option<Self> {
        Some(v)
    }
}

/// Records the nested shape seen while flattening, and checks it is rectangular.
#[derive(Debug, Default)]
pub struct ShapeTracker {
    /// Lengths of the arrays at each depth (depth 0 = the outermost array); inner arrays finish
    /// before outer ones, so slots fill in any order.
    dims: Vec<Option<usize>>,
    /// Depth at which scalars were found (all scalars must sit at the same depth).
    leaf_depth: Option<usize>,
}

impl ShapeTracker {
    /// The shape of the decoded value (empty for a scalar).
    pub fn shape(&self) -> Vec<i64> {
        let depth = self.leaf_depth.unwrap_or(self.dims.len());
        self.dims.iter().take(depth).map(|d| d.unwrap_or(0) as i64).collect()
    }

    fn array(&mut self, depth: usize, len: usize) -> Result<(), DecodeError> {
        if self.dims.len() <= depth {
            self.dims.resize(depth + 1, None);
        }
        match self.dims[depth] {
            Some(seen) if seen != len => Err(DecodeError(format!(
                "ragged nested array: an array at depth {depth} has {len} elements, another has {seen}"
            ))),
            _ => {
                self.dims[depth] = Some(len);
                Ok(())
            }
        }
    }

    fn leaf(&mut self, depth: usize) -> Result<(), DecodeError> {
        match self.leaf_depth {
            None => self.leaf_depth = Some(depth),
            Some(d) if d != depth => {
                return Err(DecodeError(format!(
                    "ragged nested array: values found at depth {depth} and at depth {d}"
                )));
            }
            _ => {}
        }
        Ok(())
    }
}

struct Flatten<'a, T> {
    out: &'a mut Vec<T>,
    shape: &'a mut ShapeTracker,
    depth: usize,
    limit: usize,
}

impl<'de, T: Element> DeserializeSeed<'de> for Flatten<'_, T> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<T: Element> Flatten<'_, T> {
    fn push<E: de::Error>(&mut self, v: Option<T>, what: fmt::Arguments<'_>) -> Result<(), E> {
        self.shape.leaf(self.depth).map_err(|e| E::custom(e.0))?;
        if self.out.len() >= self.limit {
            return Err(E::custom(format!("more than {} elements", self.limit)));
        }
        match v {
            Some(v) => {
                self.out.push(v);
                Ok(())
            }
            None => {
                Err(E::custom(format!("element {} is {what}, which is not a valid {} value", self.out.len(), T::DT)))
            }
        }
    }
}

impl<'de, T: Element> Visitor<'de> for Flatten<'_, T> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a {} value or an array of them", T::DT)
    }
    fn visit_bool<E: de::Error>(mut self, v: bool) -> Result<(), E> {
        self.push(T::from_bool(v), format_args!("the boolean {v}"))
    }
    fn visit_i64<E: de::Error>(mut self, v: i64) -> Result<(), E> {
        self.push(T::from_i64(v), format_args!("{v}"))
    }
    fn visit_u64<E: de::Error>(mut self, v: u64) -> Result<(), E> {
        self.push(T::from_u64(v), format_args!("{v}"))
    }
    fn visit_f64<E: de::Error>(mut self, v: f64) -> Result<(), E> {
        self.push(T::from_f64(v), format_args!("{v}"))
    }
    fn visit_str<E: de::Error>(mut self, v: &str) -> Result<(), E> {
        match T::from_str(v) {
            Some(x) => self.push(Some(x), format_args!("")),
            None => {
                let shown: String = v.chars().take(32).collect();
                self.push(None, format_args!("the string {shown:?}"))
            }
        }
    }
    fn visit_unit<E: de::Error>(mut self) -> Result<(), E> {
        self.push(None, format_args!("null"))
    }
    fn visit_map<A: de::MapAccess<'de>>(mut self, _: A) -> Result<(), A::Error> {
        self.push(None, format_args!("an object"))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Flatten { out, shape, depth, limit } = self;
        let mut n = 0usize;
        loop {
            let seed = Flatten { out: &mut *out, shape: &mut *shape, depth: depth + 1, limit };
            if seq.next_element_seed(seed)?.is_none() {
                break;
            }
            n += 1;
        }
        shape.array(depth, n).map_err(|e| de::Error::custom(e.0))?;
        if n == 0 {
            // An empty array contributes no scalars; its depth is its leaf depth.
            shape.leaf(depth + 1).map_err(|e| de::Error::custom(e.0))?;
        }
        Ok(())
    }
}

fn flatten_into<T: Element>(
    json: &str,
    out: &mut Vec<T>,
    shape: &mut ShapeTracker,
    limit: usize,
) -> Result<(), DecodeError> {
    let mut de = serde_json::Deserializer::from_str(json);
    Flatten { out, shape, depth: 0, limit }.deserialize(&mut de).map_err(|e| DecodeError(strip_position(e)))
}

/// serde_json appends "at line 1 column 42" to errors; keep it only for syntax errors.
fn strip_position(e: serde_json::Error) -> String {
    if e.is_syntax() || e.is_eof() {
        return e.to_string();
    }
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// Decodes the next JSON value of a deserializer (a value or nested arrays of values) into `out`,
/// as [`decode_json_into`] does from a string: the one-pass decoders use it inside their own
/// parse of the request, with no pre-scan of the value. Errors carry the same text as
/// [`decode_json_into`]'s, with the deserializer's position appended.
pub struct DecodeSeed<'a> {
    pub out: &'a mut TensorData,
    pub shape: &'a mut ShapeTracker,
    /// Caps the total number of elements in `out`.
    pub limit: usize,
}

impl<'de> DeserializeSeed<'de> for DecodeSeed<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        let DecodeSeed { out, shape, limit } = self;
        with_data!(out, v => Flatten { out: v, shape, depth: 0, limit }.deserialize(d))
    }
}

/// Decodes `json` (a value or nested arrays of values) as elements of `dt`, appending to `out`.
/// `limit` caps the total number of elements in `out`.
pub fn decode_json_into(
    json: &str,
    out: &mut TensorData,
    shape: &mut ShapeTracker,
    limit: usize,
) -> Result<(), DecodeError> {
    match out {
        TensorData::Bool(v) => flatten_into(json, v, shape, limit),
        TensorData::U8(v) => flatten_into(json, v, shape, limit),
        TensorData::I8(v) => flatten_into(json, v, shape, limit),
        TensorData::U16(v) => flatten_into(json, v, shape, limit),
        TensorData::I16(v) => flatten_into(json, v, shape, limit),
        TensorData::U32(v) => flatten_into(json, v, shape, limit),
        TensorData::I32(v) => flatten_into(json, v, shape, limit),
        TensorData::U64(v) => flatten_into(json, v, shape, limit),
        TensorData::I64(v) => flatten_into(json, v, shape, limit),
        TensorData::F32(v) => flatten_into(json, v, shape, limit),
        TensorData::F64(v) => flatten_into(json, v, shape, limit),
        TensorData::Bytes(v) => flatten_into(json, v, shape, limit),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(dt: DataType, json: &str) -> Result<(TensorData, Vec<i64>), String> {
        let mut out = TensorData::empty(dt, 0);
        let mut shape = ShapeTracker::default();
        decode_json_into(json, &mut out, &mut shape, 1 << 20).map_err(|e| e.0)?;
        Ok((out, shape.shape()))
    }

    #[test]
    fn flat_and_nested_numbers_decode_to_the_same_buffer() {
        let (a, sa) = decode(DataType::F32, "[1, 2.5, 3, 4]").unwrap();
        let (b, sb) = decode(DataType::F32, "[[1, 2.5], [3, 4]]").unwrap();
        assert_eq!(a, TensorData::F32(vec![1.0, 2.5, 3.0, 4.0]));
        assert_eq!(a, b);
        assert_eq!(sa, vec![4]);
        assert_eq!(sb, vec![2, 2]);
        let (_, s3) = decode(DataType::F32, "[[[1], [2], [3]], [[4], [5], [6]]]").unwrap();
        assert_eq!(s3, vec![2, 3, 1]);
    }

    #[test]
    fn integers_refuse_fractions_and_out_of_range_values() {
        assert_eq!(decode(DataType::I64, "[1, 2.0, -3]").unwrap().0, TensorData::I64(vec![1, 2, -3]));
        let e = decode(DataType::I64, "[1, 2.5]").unwrap_err();
        assert!(e.contains("element 1 is 2.5") && e.contains("INT64"), "{e}");
        let e = decode(DataType::U8, "[256]").unwrap_err();
        assert!(e.contains("UINT8"), "{e}");
    }

    #[test]
    fn non_numeric_values_are_named() {
        let e = decode(DataType::F32, r#"[1, "x"]"#).unwrap_err();
        assert!(e.contains("element 1 is the string \"x\""), "{e}");
        let e = decode(DataType::F32, "[1, null]").unwrap_err();
        assert!(e.contains("null"), "{e}");
    }

    #[test]
    fn ragged_arrays_are_refused() {
        let e = decode(DataType::F32, "[[1, 2], [3]]").unwrap_err();
        assert!(e.contains("ragged"), "{e}");
        let e = decode(DataType::F32, "[[1, 2], 3]").unwrap_err();
        assert!(e.contains("ragged"), "{e}");
    }

    #[test]
    fn bools_and_strings() {
        assert_eq!(decode(DataType::Bool, "[true, false]").unwrap().0, TensorData::Bool(vec![true, false]));
        assert!(decode(DataType::Bool, "[1]").is_err());
        let (s, shape) = decode(DataType::Bytes, r#"[["a", "b"]]"#).unwrap();
        assert_eq!(s, TensorData::Bytes(vec!["a".into(), "b".into()]));
        assert_eq!(shape, vec![1, 2]);
    }

    #[test]
    fn element_limit_stops_decoding_early() {
        let mut out = TensorData::empty(DataType::F32, 0);
        let mut shape = ShapeTracker::default();
        let e = decode_json_into("[1,2,3,4,5]", &mut out, &mut shape, 3).unwrap_err();
        assert!(e.0.contains("more than 3 elements"), "{}", e.0);
    }

    #[test]
    fn binary_layout_round_trips() {
        for data in [
            TensorData::F32(vec![1.5, -2.0]),
            TensorData::I64(vec![i64::MIN, 7]),
            TensorData::Bool(vec![true, false, true]),
            TensorData::Bytes(vec!["héllo".into(), String::new()]),
        ] {
            let raw = data.to_le_bytes();
            assert_eq!(TensorData::from_le_bytes(data.datatype(), &raw).unwrap(), data);
        }
        assert!(TensorData::from_le_bytes(DataType::F32, &[0, 0, 0]).is_err());
        assert!(TensorData::from_le_bytes(DataType::Bytes, &[9, 0, 0, 0, b'a']).is_err());
    }

    #[test]
    fn element_count_checks_overflow() {
        assert_eq!(element_count(&[2, 3]), Some(6));
        assert_eq!(element_count(&[-1, 3]), None);
        assert_eq!(element_count(&[i64::MAX, i64::MAX]), None);
    }
}
