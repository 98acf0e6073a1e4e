//! Reads the class labels that scikit-learn exporters store in the model graph
//! (`classlabels_strings` / `classlabels_int64s` attributes of the ai.onnx.ml classifier
//! operators), with a minimal protobuf walk, so /predict can name each probability column.

/// Protobuf wire reader over a byte slice.
struct Reader<'a> {
    buf: &'a [u8],
}

enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Other,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (b, rest) = self.buf.split_first()?;
            self.buf = rest;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    fn next(&mut self) -> Option<(u64, Field<'a>)> {
        if self.buf.is_empty() {
            return None;
        }
        let key = self.varint()?;
        let (num, wire) = (key >> 3, key & 7);
        let field = match wire {
            0 => Field::Varint(self.varint()?),
            1 => {
                self.buf = self.buf.get(8..)?;
                Field::Other
            }
            2 => {
                let n = usize::try_from(self.varint()?).ok()?;
                let (b, rest) = (self.buf.get(..n)?, self.buf.get(n..)?);
                self.buf = rest;
                Field::Bytes(b)
            }
            5 => {
                self.buf = self.buf.get(4..)?;
                Field::Other
            }
            _ => return None,
        };
        Some((num, field))
    }
}

fn fields(buf: &[u8]) -> impl Iterator<Item = (u64, Field<'_>)> {
    let mut r = Reader { buf };
    std::iter::from_fn(move || r.next())
}

/// Class labels of the first classifier node in the graph, if any.
pub fn class_labels(model: &[u8]) -> Option<Vec<String>> {
    // ModelProto.graph = 7; GraphProto.node = 1; NodeProto.attribute = 5, op_type = 4;
    // AttributeProto.name = 1, ints = 8 (packed or not), strings = 9.
    let graph = fields(model).find_map(|(n, f)| match (n, f) {
        (7, Field::Bytes(b)) => Some(b),
        _ => None,
    })?;
    for (n, f) in fields(graph) {
        let (1, Field::Bytes(node)) = (n, f) else { continue };
        for (n, f) in fields(node) {
            let (5, Field::Bytes(attr)) = (n, f) else { continue };
            let mut name = &b""[..];
            let mut strings = Vec::new();
            let mut ints = Vec::new();
            for (n, f) in fields(attr) {
                match (n, f) {
                    (1, Field::Bytes(b)) => name = b,
                    (9, Field::Bytes(b)) => strings.push(String::from_utf8_lossy(b).into_owned()),
                    (8, Field::Varint(v)) => ints.push(v as i64),
                    (8, Field::Bytes(packed)) => {
                        let mut r = Reader { buf: packed };
                        while let Some(v) = r.varint() {
                            ints.push(v as i64);
                        }
                    }
                    _ => {}
                }
            }
            match name {
                b"classlabels_strings" if !strings.is_empty() => return Some(strings),
                b"classlabels_int64s" | b"classlabels_ints" if !ints.is_empty() => {
                    return Some(ints.iter().map(i64::to_string).collect());
                }
                _ => {}
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(name: &str) -> Vec<u8> {
        let p = format!("{}/../examples/models/{name}/model.onnx", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(p).expect("example model")
    }

    #[test]
    fn reads_int_and_string_labels_from_sklearn_exports() {
        assert_eq!(class_labels(&model("iris")), Some(vec!["0".into(), "1".into(), "2".into()]));
        assert_eq!(class_labels(&model("tabular")), Some(vec!["fraud".into(), "legit".into()]));
        assert_eq!(class_labels(&model("mlp")), None);
    }

    #[test]
    fn garbage_is_not_a_classifier() {
        assert_eq!(class_labels(b"not a model at all"), None);
        assert_eq!(class_labels(&[0xff; 16]), None);
    }
}
