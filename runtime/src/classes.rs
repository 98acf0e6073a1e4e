//! Class names (`KINFER_LABELS_FILE`, one name per line in class-index order) and top-k
//! confidences (`KINFER_TOP_K`) for `/predict` responses of classifiers, image or not.

use serde::{Serialize, Serializer, ser::SerializeMap, ser::SerializeSeq};

use crate::{
    model::ModelInfo,
    protocol::shape_str,
    tensor::{DataType, Tensor},
};

/// Default number of classes listed per row.
pub const DEFAULT_TOP_K: usize = 5;

/// Largest labels file read (a class name per line).
const MAX_LABELS_BYTES: u64 = 16 << 20;

/// Reads a labels file: one class name per line, line N = class index N-1; trailing blank lines
/// are ignored, other blank lines are an error.
pub fn read_labels_file(path: &std::path::Path) -> Result<Vec<String>, String> {
    let meta =
        std::fs::metadata(path).map_err(|e| format!("KINFER_LABELS_FILE: cannot read {}: {e}", path.display()))?;
    if meta.len() > MAX_LABELS_BYTES {
        return Err(format!("KINFER_LABELS_FILE: {} is larger than 16 MiB", path.display()));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("KINFER_LABELS_FILE: cannot read {} as UTF-8 text: {e}", path.display()))?;
    parse_labels(&text).map_err(|e| format!("KINFER_LABELS_FILE {}: {e}", path.display()))
}

pub fn parse_labels(text: &str) -> Result<Vec<String>, String> {
    let mut labels: Vec<String> = text.lines().map(|l| l.trim().to_string()).collect();
    while labels.last().is_some_and(|l| l.is_empty()) {
        labels.pop();
    }
    if labels.is_empty() {
        return Err("the file has no class names".into());
    }
    if let Some(i) = labels.iter().position(String::is_empty) {
        return Err(format!("line {} is empty; write one class name per line, in class-index order", i + 1));
    }
    Ok(labels)
}

/// How `/predict` names classes: which output holds the per-class scores, their names, k.
#[derive(Debug, Clone)]
pub struct Classes {
    labels: Option<Vec<String>>,
    top_k: usize,
    scores: usize,
}

impl Classes {
    /// `None` when the model has no `[N, classes]` score output and nothing asked for one.
    pub fn new(info: &ModelInfo, labels: Option<Vec<String>>, top_k: Option<usize>) -> Result<Option<Classes>, String> {
        let scores = info.classifier_outputs().map(|(_, p)| p).or_else(|| {
            info.outputs.iter().position(|o| matches!(o.datatype, DataType::F32 | DataType::F64) && o.shape.len() == 2)
        });
        let Some(scores) = scores else {
            if labels.is_some() || top_k.is_some() {
                let outs: Vec<String> =
                    info.outputs.iter().map(|o| format!("{} {} {}", o.name, o.datatype, shape_str(&o.shape))).collect();
                return Err(format!(
                    "KINFER_LABELS_FILE/KINFER_TOP_K need an output of per-class scores, FP32 or FP64 [N, classes]; the model's outputs are {}",
                    outs.join(", ")
                ));
            }
            return Ok(None);
        };
        if let (Some(l), Some(n)) = (&labels, info.outputs.get(scores).and_then(|o| o.shape.get(1)))
            && *n >= 0
            && l.len() as i64 != *n
        {
            return Err(format!(
                "KINFER_LABELS_FILE has {} class names but output '{}' has {n} classes",
                l.len(),
                info.outputs.get(scores).map_or("", |o| o.name.as_str())
            ));
        }
        Ok(Some(Classes { labels, top_k: top_k.unwrap_or(DEFAULT_TOP_K).max(1), scores }))
    }

    pub fn labels(&self) -> Option<&[String]> {
        self.labels.as_deref()
    }

    pub fn top_k(&self) -> usize {
        self.top_k
    }

    /// `{"model_name", "model_version", "predictions": [{"label", "index", "confidence",
    /// "top_k": [...]}, ...]}`; `None` when the score output has no row per input row.
    pub fn encode_predict(
        &self,
        info: &ModelInfo,
        outputs: &[Tensor],
        n: usize,
        files: Option<&[String]>,
    ) -> Option<Vec<u8>> {
        let scores = outputs.get(self.scores)?;
        if scores.shape.len() != 2 || scores.shape.first() != Some(&(n as i64)) {
            return None;
        }
        let cols = usize::try_from(*scores.shape.get(1)?).ok()?;
        if scores.data.len() != n.checked_mul(cols)? {
            return None;
        }
        #[derive(Serialize)]
        struct Resp<'a> {
            model_name: &'a str,
            model_version: &'a str,
            predictions: Rows<'a>,
        }
        let resp = Resp {
            model_name: &info.name,
            model_version: &info.version,
            predictions: Rows { classes: self, scores, n, cols, files },
        };
        serde_json::to_vec(&resp).ok()
    }

    fn name(&self, index: usize) -> Label<'_> {
        match self.labels.as_ref().and_then(|l| l.get(index)) {
            Some(s) => Label::Name(s),
            None => Label::Index(index),
        }
    }
}

#[derive(Serialize)]
#[serde(untagged)]
enum Label<'a> {
    Name(&'a str),
    Index(usize),
}

struct Rows<'a> {
    classes: &'a Classes,
    scores: &'a Tensor,
    n: usize,
    cols: usize,
    files: Option<&'a [String]>,
}

#[derive(Serialize)]
struct Ranked<'a> {
    label: Label<'a>,
    index: usize,
    confidence: f64,
}

impl Serialize for Rows<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.n))?;
        for i in 0..self.n {
            let mut row: Vec<(usize, f64)> =
                (0..self.cols).map(|k| (k, self.scores.data.get_f64(i * self.cols + k).unwrap_or(f64::NAN))).collect();
            // Highest first; NaN last; ties in index order.
            row.sort_by(|a, b| match (a.1.is_nan(), b.1.is_nan()) {
                (false, false) => b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)),
                (x, y) => x.cmp(&y).then(a.0.cmp(&b.0)),
            });
            row.truncate(self.classes.top_k);
            let ranked: Vec<Ranked<'_>> =
                row.iter().map(|(k, c)| Ranked { label: self.classes.name(*k), index: *k, confidence: *c }).collect();
            seq.serialize_element(&Row { ranked: &ranked, file: self.files.and_then(|f| f.get(i)) })?;
        }
        seq.end()
    }
}

struct Row<'a> {
    ranked: &'a [Ranked<'a>],
    file: Option<&'a String>,
}

impl Serialize for Row<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        if let Some(f) = self.file {
            map.serialize_entry("file", f)?;
        }
        if let Some(top) = self.ranked.first() {
            map.serialize_entry("label", &top.label)?;
            map.serialize_entry("index", &top.index)?;
            map.serialize_entry("confidence", &top.confidence)?;
        }
        map.serialize_entry("top_k", self.ranked)?;
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{model::TensorSpec, tensor::TensorData};

    fn info(classes: i64) -> ModelInfo {
        ModelInfo {
            name: "m".into(),
            version: "2".into(),
            inputs: vec![TensorSpec { name: "x".into(), datatype: DataType::F32, shape: vec![-1, 4] }],
            outputs: vec![TensorSpec { name: "y".into(), datatype: DataType::F32, shape: vec![-1, classes] }],
            class_labels: None,
        }
    }

    #[test]
    fn labels_file_format() {
        assert_eq!(parse_labels("cat\r\ndog\n\n").unwrap(), vec!["cat", "dog"]);
        assert!(parse_labels("cat\n\ndog").unwrap_err().contains("line 2 is empty"));
        assert!(parse_labels("\n\n").is_err());
    }

    #[test]
    fn top_k_with_names_and_indices() {
        let labels = Some(vec!["a".to_string(), "b".into(), "c".into()]);
        let c = Classes::new(&info(3), labels, Some(2)).unwrap().unwrap();
        let out = vec![Tensor {
            name: "y".into(),
            shape: vec![2, 3],
            data: TensorData::F32(vec![0.1, 0.7, 0.2, 0.5, 0.25, 0.25]),
        }];
        let files = vec!["one.png".to_string(), "two.jpg".to_string()];
        let body = c.encode_predict(&info(3), &out, 2, Some(&files)).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let p = &v["predictions"];
        assert_eq!(v["model_version"], "2");
        assert_eq!(p[0]["file"], "one.png");
        assert_eq!(p[0]["label"], "b");
        assert_eq!(p[0]["index"], 1);
        assert_eq!(p[0]["top_k"].as_array().unwrap().len(), 2);
        assert_eq!(p[0]["top_k"][1]["label"], "c");
        assert_eq!(p[1]["top_k"][1]["label"], "b", "ties keep index order");
        let c = Classes::new(&info(3), None, None).unwrap().unwrap();
        let body = c.encode_predict(&info(3), &out, 2, None).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["predictions"][0]["label"], 1);
        assert_eq!(v["predictions"][0]["top_k"].as_array().unwrap().len(), 3);
        assert!(v["predictions"][0].get("file").is_none());
    }

    #[test]
    fn label_count_must_match_the_model() {
        let e = Classes::new(&info(3), Some(vec!["a".into()]), None).unwrap_err();
        assert!(e.contains("1 class names but output 'y' has 3 classes"), "{e}");
        let mut no_scores = info(3);
        no_scores.outputs[0].shape = vec![-1];
        assert!(Classes::new(&no_scores, None, Some(3)).unwrap_err().contains("per-class scores"));
        assert!(Classes::new(&no_scores, None, None).unwrap().is_none());
    }
}
