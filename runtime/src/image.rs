//! Image inputs: JPEG/PNG bytes decoded and preprocessed into a model's FP32 image tensor
//! (rank 4, NCHW or NHWC), as declared in `KINFER_IMAGE_PREPROCESS`.
//!
//! Images arrive as `multipart/form-data` uploads on `/predict` (one file = one row) or as
//! base64 strings in a `BYTES` input of an Open Inference Protocol v2 request. Decoding is
//! bounded: the pixel count is read from the header and checked before any pixel is decoded,
//! and the decoder's allocations are capped through `image::Limits`.

use std::io::Cursor;

use base64::Engine as _;
use bytes::Bytes;
use image::{DynamicImage, ImageDecoder, ImageReader, imageops::FilterType};

use crate::{
    classes::Classes,
    error::ApiError,
    model::ModelInfo,
    protocol::{Limits, shape_str, too_many_rows},
    tensor::{DataType, Tensor, TensorData},
};

/// What every refused image is told it should have been.
pub const ACCEPTED: &str = "expected a JPEG or PNG image";

/// Default bound on an image's size before decoding: 40 megapixels.
pub const DEFAULT_MAX_MEGAPIXELS: f64 = 40.0;

/// How the image is resized before the optional centre crop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resize {
    /// To exactly height × width (the aspect ratio is not kept).
    Exact { height: u32, width: u32 },
    /// The shorter side to this many pixels, keeping the aspect ratio (then crop).
    Shorter(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    Nchw,
    Nhwc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelOrder {
    Rgb,
    Bgr,
}

/// The preprocessing an operator declares (`KINFER_IMAGE_PREPROCESS`), before it is checked
/// against the model.
#[derive(Debug, Clone, PartialEq)]
pub struct Preprocess {
    pub input: Option<String>,
    pub resize: Option<Resize>,
    pub crop: Option<(u32, u32)>,
    pub scale: f32,
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    pub layout: Option<Layout>,
    pub channels: ChannelOrder,
    pub filter: FilterType,
    pub max_megapixels: f64,
}

impl Default for Preprocess {
    fn default() -> Self {
        Preprocess {
            input: None,
            resize: None,
            crop: None,
            scale: 1.0 / 255.0,
            mean: vec![0.0],
            std: vec![1.0],
            layout: None,
            channels: ChannelOrder::Rgb,
            filter: FilterType::Triangle,
            max_megapixels: DEFAULT_MAX_MEGAPIXELS,
        }
    }
}

fn parse_hw(key: &str, v: &str) -> Result<(u32, u32), String> {
    let (h, w) =
        v.split_once(['x', 'X']).ok_or_else(|| format!("{key}={v}: expected HEIGHTxWIDTH, e.g. {key}=224x224"))?;
    let h: u32 = h.trim().parse().map_err(|_| format!("{key}={v}: height is not a positive integer"))?;
    let w: u32 = w.trim().parse().map_err(|_| format!("{key}={v}: width is not a positive integer"))?;
    if h == 0 || w == 0 || h > 16384 || w > 16384 {
        return Err(format!("{key}={v}: sizes must be between 1 and 16384"));
    }
    Ok((h, w))
}

fn parse_floats(key: &str, v: &str) -> Result<Vec<f32>, String> {
    let vals = v
        .split(',')
        .map(|x| x.trim().parse::<f32>().ok().filter(|f| f.is_finite()))
        .collect::<Option<Vec<f32>>>()
        .ok_or_else(|| format!("{key}={v}: expected 1 or 3 comma-separated numbers"))?;
    if vals.len() != 1 && vals.len() != 3 {
        return Err(format!("{key}={v}: expected 1 or 3 numbers, got {}", vals.len()));
    }
    Ok(vals)
}

impl Preprocess {
    /// Parses `key=value` pairs separated by commas, semicolons or spaces, e.g.
    /// `resize=48x192,mean=0.5,0.5,0.5,std=0.5,0.5,0.5,layout=nchw,channels=rgb`
    /// (a bare number continues the previous key's list). `auto` (or an empty string) means
    /// every default.
    pub fn parse(s: &str) -> Result<Preprocess, String> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        for token in s.split([',', ';', ' ', '\n', '\t']).map(str::trim).filter(|t| !t.is_empty()) {
            match token.split_once('=') {
                Some((k, v)) => pairs.push((k.trim().to_ascii_lowercase(), v.trim().to_string())),
                None if token.eq_ignore_ascii_case("auto") && pairs.is_empty() => {}
                None => match pairs.last_mut() {
                    Some((k, v)) if k == "mean" || k == "std" => {
                        v.push(',');
                        v.push_str(token);
                    }
                    _ => return Err(format!("'{token}' is not a key=value pair")),
                },
            }
        }
        let mut p = Preprocess::default();
        for (k, v) in pairs {
            match k.as_str() {
                "input" => p.input = Some(v),
                "resize" => {
                    p.resize = Some(if v.contains(['x', 'X']) {
                        let (height, width) = parse_hw("resize", &v)?;
                        Resize::Exact { height, width }
                    } else {
                        let n: u32 = v
                            .parse()
                            .ok()
                            .filter(|n| (1..=16384).contains(n))
                            .ok_or_else(|| format!("resize={v}: expected HEIGHTxWIDTH or a shorter-side length"))?;
                        Resize::Shorter(n)
                    })
                }
                "crop" => p.crop = Some(parse_hw("crop", &v)?),
                "scale" => {
                    p.scale = v
                        .parse::<f32>()
                        .ok()
                        .filter(|f| f.is_finite())
                        .ok_or_else(|| format!("scale={v}: expected a number (1/255 = 0.00392156862745098)"))?
                }
                "mean" => p.mean = parse_floats("mean", &v)?,
                "std" => {
                    p.std = parse_floats("std", &v)?;
                    if p.std.contains(&0.0) {
                        return Err(format!("std={v}: a standard deviation of 0 divides by zero"));
                    }
                }
                "layout" => {
                    p.layout = Some(match v.to_ascii_lowercase().as_str() {
                        "nchw" => Layout::Nchw,
                        "nhwc" => Layout::Nhwc,
                        _ => return Err(format!("layout={v}: expected nchw or nhwc")),
                    })
                }
                "channels" => {
                    p.channels = match v.to_ascii_lowercase().as_str() {
                        "rgb" => ChannelOrder::Rgb,
                        "bgr" => ChannelOrder::Bgr,
                        _ => return Err(format!("channels={v}: expected rgb or bgr")),
                    }
                }
                "filter" => {
                    p.filter = match v.to_ascii_lowercase().as_str() {
                        "nearest" => FilterType::Nearest,
                        "bilinear" | "triangle" => FilterType::Triangle,
                        "bicubic" | "cubic" | "catmullrom" => FilterType::CatmullRom,
                        "lanczos" | "lanczos3" => FilterType::Lanczos3,
                        _ => return Err(format!("filter={v}: expected nearest, bilinear, bicubic or lanczos")),
                    }
                }
                "max_megapixels" => {
                    p.max_megapixels = v
                        .parse::<f64>()
                        .ok()
                        .filter(|m| m.is_finite() && *m > 0.0)
                        .ok_or_else(|| format!("max_megapixels={v}: expected a positive number"))?
                }
                _ => {
                    return Err(format!(
                        "unknown key '{k}'; the keys are input, resize, crop, scale, mean, std, layout, channels, filter, max_megapixels"
                    ));
                }
            }
        }
        Ok(p)
    }
}

/// The preprocessing resolved against the model: which input, its layout and exact size.
#[derive(Debug, Clone)]
pub struct Pipeline {
    pub input: String,
    pub layout: Layout,
    /// 3 (colour) or 1 (grey).
    pub channels: usize,
    pub height: u32,
    pub width: u32,
    order: ChannelOrder,
    resize: Option<Resize>,
    crop: Option<(u32, u32)>,
    /// Per channel (model order): value = pixel * mul + add.
    mul: [f32; 3],
    add: [f32; 3],
    filter: FilterType,
    max_pixels: u64,
}

fn per_channel(v: &[f32]) -> [f32; 3] {
    match v {
        [a, b, c] => [*a, *b, *c],
        [a] => [*a; 3],
        _ => [0.0; 3],
    }
}

impl Pipeline {
    /// Checks the declared preprocessing against the model's inputs.
    pub fn new(p: &Preprocess, info: &ModelInfo) -> Result<Pipeline, String> {
        let candidates: Vec<_> = info
            .inputs
            .iter()
            .filter(|s| p.input.as_deref().is_none_or(|n| n == s.name))
            .filter(|s| s.datatype == DataType::F32 && s.shape.len() == 4)
            .collect();
        let spec = match (candidates.as_slice(), &p.input) {
            ([one], _) => *one,
            ([], Some(name)) => {
                return Err(format!("input={name}: the model has no FP32 rank-4 input of that name"));
            }
            ([], None) => {
                return Err(format!(
                    "the model has no FP32 rank-4 image input (its inputs: {}); image preprocessing needs one",
                    info.inputs
                        .iter()
                        .map(|s| format!("{} {} {}", s.name, s.datatype, shape_str(&s.shape)))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            (_, _) => return Err("the model has several FP32 rank-4 inputs; name the image one with input=NAME".into()),
        };
        let d = |i: usize| spec.shape.get(i).copied().unwrap_or(-1);
        // Colour first: [N, 1, 2, 3] is one 2x3 grey image in NCHW but reads better as NHWC RGB.
        let layout = match p.layout {
            Some(l) => l,
            None if d(1) == 3 => Layout::Nchw,
            None if d(3) == 3 => Layout::Nhwc,
            None if d(1) == 1 => Layout::Nchw,
            None if d(3) == 1 => Layout::Nhwc,
            None => Layout::Nchw,
        };
        let (c, h, w) = match layout {
            Layout::Nchw => (d(1), d(2), d(3)),
            Layout::Nhwc => (d(3), d(1), d(2)),
        };
        let channels = match c {
            1 => 1,
            3 | -1 => 3,
            other => {
                return Err(format!(
                    "input '{}' {} has {other} channels in layout {layout:?}; expected 1 or 3 (set layout=nchw or layout=nhwc)",
                    spec.name,
                    shape_str(&spec.shape)
                ));
            }
        };
        // The size the preprocessing produces: the crop, else an exact resize, else the model's.
        let produced = match (p.crop, p.resize) {
            (Some(c), _) => Some(c),
            (None, Some(Resize::Exact { height, width })) => Some((height, width)),
            (None, Some(Resize::Shorter(_))) => {
                return Err("resize=N (shorter side) needs crop=HxW to give a fixed size".into());
            }
            (None, None) => None,
        };
        let model_hw = (u32::try_from(h).ok().filter(|v| *v > 0), u32::try_from(w).ok().filter(|v| *v > 0));
        let (height, width) = match (produced, model_hw) {
            (Some((ph, pw)), (mh, mw)) => {
                if mh.is_some_and(|m| m != ph) || mw.is_some_and(|m| m != pw) {
                    return Err(format!(
                        "the preprocessing produces {ph}x{pw} but input '{}' {} takes {h}x{w}",
                        spec.name,
                        shape_str(&spec.shape)
                    ));
                }
                (ph, pw)
            }
            (None, (Some(mh), Some(mw))) => (mh, mw),
            (None, _) => {
                return Err(format!(
                    "input '{}' {} has a dynamic height or width; set resize=HEIGHTxWIDTH",
                    spec.name,
                    shape_str(&spec.shape)
                ));
            }
        };
        if let (Some((ch, cw)), Some(r)) = (p.crop, p.resize) {
            let fits = match r {
                Resize::Exact { height, width } => ch <= height && cw <= width,
                Resize::Shorter(n) => ch <= n && cw <= n,
            };
            if !fits {
                return Err(format!("crop={ch}x{cw} is larger than the resized image"));
            }
        }
        let resize = match (p.resize, p.crop) {
            (None, None) => Some(Resize::Exact { height, width }),
            (r, _) => r,
        };
        let (mean, std) = (per_channel(&p.mean), per_channel(&p.std));
        let mut mul = [0.0; 3];
        let mut add = [0.0; 3];
        for i in 0..3 {
            mul[i] = p.scale / std[i];
            add[i] = -mean[i] / std[i];
        }
        let max_pixels = (p.max_megapixels * 1e6).clamp(1.0, 1e12) as u64;
        Ok(Pipeline {
            input: spec.name.clone(),
            layout,
            channels,
            height,
            width,
            order: p.channels,
            resize,
            crop: p.crop,
            mul,
            add,
            filter: p.filter,
            max_pixels,
        })
    }

    /// Elements of one preprocessed image.
    pub fn image_len(&self) -> usize {
        self.channels * self.height as usize * self.width as usize
    }

    /// The tensor shape for `n` images.
    pub fn shape(&self, n: usize) -> Vec<i64> {
        let (c, h, w) = (self.channels as i64, i64::from(self.height), i64::from(self.width));
        match self.layout {
            Layout::Nchw => vec![n as i64, c, h, w],
            Layout::Nhwc => vec![n as i64, h, w, c],
        }
    }

    /// Decodes and preprocesses one image, appending its values to `out`.
    pub fn preprocess_into(&self, bytes: &[u8], out: &mut Vec<f32>) -> Result<(), String> {
        let img = decode_image(bytes, self.max_pixels)?;
        let img = self.resize_and_crop(img)?;
        let (h, w) = (self.height as usize, self.width as usize);
        let start = out.len();
        out.resize(start + self.image_len(), 0.0);
        let dst = &mut out[start..];
        if self.channels == 1 {
            let grey = img.to_luma8();
            for (i, p) in grey.as_raw().iter().enumerate() {
                dst[i] = f32::from(*p) * self.mul[0] + self.add[0];
            }
            return Ok(());
        }
        let rgb = img.to_rgb8();
        let src = rgb.as_raw();
        let plane = h * w;
        for (i, px) in src.chunks_exact(3).enumerate() {
            for c in 0..3 {
                let s = match self.order {
                    ChannelOrder::Rgb => c,
                    ChannelOrder::Bgr => 2 - c,
                };
                let v = f32::from(px[s]) * self.mul[c] + self.add[c];
                match self.layout {
                    Layout::Nchw => dst[c * plane + i] = v,
                    Layout::Nhwc => dst[i * 3 + c] = v,
                }
            }
        }
        Ok(())
    }

    fn resize_and_crop(&self, img: DynamicImage) -> Result<DynamicImage, String> {
        let (w0, h0) = (img.width(), img.height());
        let img = match self.resize {
            Some(Resize::Exact { height, width }) if (width, height) != (w0, h0) => {
                img.resize_exact(width, height, self.filter)
            }
            Some(Resize::Shorter(n)) => {
                let (nw, nh) = if w0 <= h0 {
                    (n, ((u64::from(h0) * u64::from(n) + u64::from(w0) / 2) / u64::from(w0).max(1)) as u32)
                } else {
                    (((u64::from(w0) * u64::from(n) + u64::from(h0) / 2) / u64::from(h0).max(1)) as u32, n)
                };
                if (nw, nh) == (w0, h0) { img } else { img.resize_exact(nw.max(1), nh.max(1), self.filter) }
            }
            _ => img,
        };
        let img = match self.crop {
            Some((ch, cw)) => {
                let (w, h) = (img.width(), img.height());
                if cw > w || ch > h {
                    return Err(format!("the image is {w}x{h} (width x height), smaller than the {ch}x{cw} crop"));
                }
                img.crop_imm((w - cw) / 2, (h - ch) / 2, cw, ch)
            }
            None => img,
        };
        if (img.width(), img.height()) != (self.width, self.height) {
            return Err(format!(
                "preprocessing gave {}x{} instead of {}x{}",
                img.height(),
                img.width(),
                self.height,
                self.width
            ));
        }
        Ok(img)
    }

    /// Decodes and preprocesses images into the model's input tensor.
    pub fn tensor(&self, images: &[(String, &[u8])]) -> Result<Tensor, ApiError> {
        let mut data = Vec::with_capacity(self.image_len().saturating_mul(images.len()));
        for (i, (what, bytes)) in images.iter().enumerate() {
            self.preprocess_into(bytes, &mut data)
                .map_err(|e| ApiError::invalid(format!("image {i} ({what}): {e}")))?;
        }
        Ok(Tensor { name: self.input.clone(), shape: self.shape(images.len()), data: TensorData::F32(data) })
    }

    /// Open Inference Protocol v2: a `BYTES` input for the image input holds base64 images (one
    /// element per image); it is replaced by the preprocessed FP32 tensor. Other inputs pass.
    pub fn convert_v2(&self, tensors: Vec<Tensor>, limits: Limits) -> Result<Vec<Tensor>, ApiError> {
        tensors
            .into_iter()
            .map(|t| {
                let TensorData::Bytes(items) = &t.data else { return Ok(t) };
                if t.name != self.input {
                    return Ok(t);
                }
                if items.len() > limits.max_rows {
                    return Err(too_many_rows(items.len(), limits.max_rows));
                }
                if items.is_empty() || t.shape.first().is_none_or(|d| *d as usize != items.len()) {
                    return Err(ApiError::invalid(format!(
                        "input '{}': BYTES images need shape [N] (or [N, 1]) with one base64 image per element; got shape {} with {} elements",
                        t.name,
                        shape_str(&t.shape),
                        items.len()
                    )));
                }
                let mut decoded = Vec::with_capacity(items.len());
                for (i, s) in items.iter().enumerate() {
                    decoded.push(base64_image(s).map_err(|e| {
                        ApiError::invalid(format!("input '{}' element {i}: {e}", t.name))
                    })?);
                }
                let refs: Vec<(String, &[u8])> =
                    decoded.iter().enumerate().map(|(i, b)| (format!("element {i}"), b.as_slice())).collect();
                self.tensor(&refs).map_err(|e| ApiError::invalid(format!("input '{}': {}", t.name, e.message)))
            })
            .collect()
    }
}

/// Decodes base64 (standard or URL-safe alphabet, padding optional, an optional
/// `data:image/...;base64,` prefix).
pub fn base64_image(s: &str) -> Result<Vec<u8>, String> {
    let s = s.trim();
    let s = match s.strip_prefix("data:") {
        Some(rest) => rest.split_once(',').map(|(_, b)| b).unwrap_or(rest),
        None => s,
    };
    let cleaned: String = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let cleaned = cleaned.trim_end_matches('=');
    let engine = if cleaned.contains(['-', '_']) {
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
    } else {
        &base64::engine::general_purpose::STANDARD_NO_PAD
    };
    engine.decode(cleaned).map_err(|e| format!("not valid base64 ({e}); {ACCEPTED}, base64-encoded"))
}

/// True when `bytes` start like a JPEG or PNG file (gRPC clients send images as raw bytes).
pub fn is_jpeg_or_png(bytes: &[u8]) -> bool {
    format_of(bytes).is_some()
}

/// The image format, from the magic bytes: only JPEG and PNG are served.
fn format_of(bytes: &[u8]) -> Option<image::ImageFormat> {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some(image::ImageFormat::Jpeg)
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(image::ImageFormat::Png)
    } else {
        None
    }
}

/// Decodes JPEG or PNG bytes, refusing images over `max_pixels` before decoding their pixels.
/// A decoder panic (a bug in a third-party decoder) is turned into an error, not a crash.
pub fn decode_image(bytes: &[u8], max_pixels: u64) -> Result<DynamicImage, String> {
    match std::panic::catch_unwind(|| decode_image_unguarded(bytes, max_pixels)) {
        Ok(r) => r,
        Err(_) => Err(format!("the image could not be decoded; {ACCEPTED}")),
    }
}

/// [`decode_image`] without the panic guard (for the fuzz target, which must see panics).
pub fn decode_image_unguarded(bytes: &[u8], max_pixels: u64) -> Result<DynamicImage, String> {
    let Some(format) = format_of(bytes) else {
        let what = if bytes.is_empty() { "an empty file" } else { describe(bytes) };
        return Err(format!("{what} is not a supported image; {ACCEPTED}"));
    };
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(65_535);
    limits.max_image_height = Some(65_535);
    // The decoded buffer (up to 16-bit RGBA) plus the decoder's working memory.
    limits.max_alloc = Some(max_pixels.saturating_mul(8).saturating_add(64 << 20));
    reader.limits(limits);
    let corrupt = |e: image::ImageError| format!("corrupt or unsupported {format:?} image ({e}); {ACCEPTED}");
    let mut decoder = reader.into_decoder().map_err(|e| match e {
        image::ImageError::Limits(_) => format!("the image is too large (over {} megapixels)", mp(max_pixels)),
        e => corrupt(e),
    })?;
    let (w, h) = decoder.dimensions();
    let pixels = u64::from(w) * u64::from(h);
    if pixels > max_pixels {
        return Err(format!(
            "the image is {w}x{h} pixels ({} megapixels), over the limit of {} megapixels",
            mp(pixels),
            mp(max_pixels)
        ));
    }
    if pixels == 0 {
        return Err(format!("the image is {w}x{h} pixels (empty)"));
    }
    let orientation = decoder.orientation().ok();
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| match e {
        image::ImageError::Limits(_) => format!("the image is too large (over {} megapixels)", mp(max_pixels)),
        e => corrupt(e),
    })?;
    if let Some(o) = orientation {
        img.apply_orientation(o);
    }
    Ok(img)
}

fn mp(pixels: u64) -> String {
    let m = pixels as f64 / 1e6;
    if m >= 10.0 { format!("{m:.0}") } else { format!("{m:.1}") }
}

/// A short description of what a non-image looks like, for the error message.
fn describe(bytes: &[u8]) -> &'static str {
    let starts = |m: &[u8]| bytes.starts_with(m);
    if starts(b"GIF8") {
        "a GIF image"
    } else if starts(b"RIFF") && bytes.get(8..12) == Some(b"WEBP") {
        "a WebP image"
    } else if starts(b"BM") {
        "a BMP image"
    } else if starts(b"II*\0") || starts(b"MM\0*") {
        "a TIFF image"
    } else if bytes.get(4..12).is_some_and(|b| b.starts_with(b"ftyp")) {
        "an HEIC/AVIF file"
    } else if starts(b"<") || starts(b"{") || starts(b"[") {
        "a text document"
    } else {
        "the data"
    }
}

/// What the handlers need once the model is loaded: the image pipeline (when configured) and
/// the class names / top-k settings for `/predict` (when configured, or for image models).
#[derive(Debug, Default)]
pub struct Serving {
    pub pipeline: Option<Pipeline>,
    pub classes: Option<Classes>,
}

/// Settings read at start-up, before the model's signature is known.
#[derive(Debug, Default)]
pub struct Prepared {
    preprocess: Option<Preprocess>,
    labels: Option<Vec<String>>,
    top_k: Option<usize>,
}

impl Prepared {
    /// Parses `KINFER_IMAGE_PREPROCESS` and reads `KINFER_LABELS_FILE`.
    pub fn from_config(cfg: &crate::config::Config) -> Result<Prepared, String> {
        let preprocess = cfg
            .image_preprocess
            .as_deref()
            .map(|s| Preprocess::parse(s).map_err(|e| format!("KINFER_IMAGE_PREPROCESS: {e}")))
            .transpose()?;
        let labels = cfg.labels_file.as_deref().map(crate::classes::read_labels_file).transpose()?;
        Ok(Prepared { preprocess, labels, top_k: cfg.top_k })
    }

    /// Checks the settings against the model. The labels file also names the probability
    /// columns of classifiers (`info.class_labels`).
    pub fn resolve(self, info: &mut ModelInfo) -> Result<Serving, String> {
        let pipeline = self
            .preprocess
            .as_ref()
            .map(|p| Pipeline::new(p, info).map_err(|e| format!("KINFER_IMAGE_PREPROCESS: {e}")))
            .transpose()?;
        let wanted = pipeline.is_some() || self.labels.is_some() || self.top_k.is_some();
        let top_k = self.top_k.filter(|k| *k > 0);
        let classes = if wanted { Classes::new(info, self.labels, top_k)? } else { None };
        if let Some(c) = &classes
            && let Some(l) = c.labels()
        {
            info.class_labels = Some(l.to_vec());
        }
        // KINFER_TOP_K=0: no label/top-k answer (image models that are not classifiers).
        let classes = if self.top_k == Some(0) { None } else { classes };
        Ok(Serving { pipeline, classes })
    }
}

/// The boundary of a `multipart/form-data` request, if it is one.
pub fn multipart_boundary(headers: &http::HeaderMap) -> Option<Result<String, ApiError>> {
    let ct = headers.get(http::header::CONTENT_TYPE)?.to_str().ok()?;
    if !ct.trim_start().to_ascii_lowercase().starts_with("multipart/") {
        return None;
    }
    Some(multer::parse_boundary(ct).map_err(|e| ApiError::invalid(format!("invalid multipart Content-Type: {e}"))))
}

/// Reads the files of a `multipart/form-data` body (fields `file`, `image`, `files`,
/// `images`, or any field with a filename), in order: one file = one row.
pub async fn read_multipart(body: Bytes, boundary: &str, limits: Limits) -> Result<Vec<(String, Bytes)>, ApiError> {
    let stream = futures::stream::once(async move { Ok::<Bytes, std::io::Error>(body) });
    let mut mp = multer::Multipart::new(stream, boundary);
    let mut files = Vec::new();
    loop {
        let field = match mp.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return Err(ApiError::invalid(format!("invalid multipart body: {e}"))),
        };
        let name = field.name().unwrap_or("").to_string();
        let file_name = field.file_name().map(str::to_string);
        let is_image_field = matches!(name.as_str(), "file" | "files" | "image" | "images");
        if !is_image_field && file_name.is_none() {
            return Err(ApiError::invalid(format!(
                "unexpected form field '{name}'; send each image as a file in a field named 'file'"
            )));
        }
        if files.len() >= limits.max_rows {
            return Err(too_many_rows(files.len() + 1, limits.max_rows));
        }
        let bytes = field
            .bytes()
            .await
            .map_err(|e| ApiError::invalid(format!("invalid multipart body (field '{name}'): {e}")))?;
        files.push((file_name.unwrap_or_else(|| format!("field '{name}'")), bytes));
    }
    if files.is_empty() {
        return Err(ApiError::invalid(format!(
            "the multipart body has no image; send each image ({}) as a file in a field named 'file'",
            "JPEG or PNG"
        )));
    }
    Ok(files)
}

/// `/predict` with a `multipart/form-data` body: decodes the uploaded images into the model's
/// inputs. Returns the inputs and the file names (one per row).
pub async fn predict_inputs(
    serving: Option<&Serving>,
    info: &ModelInfo,
    body: Bytes,
    boundary: &str,
    limits: Limits,
) -> Result<(Vec<Tensor>, Vec<String>), ApiError> {
    let Some(pipeline) = serving.and_then(|s| s.pipeline.clone()) else {
        return Err(ApiError::invalid(
            "this model is not served with image inputs (KINFER_IMAGE_PREPROCESS is not set); send JSON instead",
        ));
    };
    if info.inputs.len() != 1 {
        return Err(ApiError::invalid(format!(
            "image uploads need a model with a single input; this one has {} (use v2 with a BYTES input)",
            info.inputs.len()
        )));
    }
    let files = read_multipart(body, boundary, limits).await?;
    let (tensor, names) = tokio::task::spawn_blocking(move || {
        let refs: Vec<(String, &[u8])> = files.iter().map(|(n, b)| (n.clone(), b.as_ref())).collect();
        let names = files.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
        pipeline.tensor(&refs).map(|t| (t, names))
    })
    .await
    .map_err(|_| ApiError::internal("the image decoding task failed"))??;
    let inputs = crate::protocol::check_inputs(info, vec![tensor], limits)?;
    Ok((inputs, names))
}

/// Decodes an Open Inference Protocol v2 request; with image inputs configured, on a blocking
/// thread, so that decoding photos never stalls the async workers (health checks included).
pub async fn decode_v2(
    serving: Option<&Serving>,
    body: Bytes,
    header_len: Option<usize>,
    info: &std::sync::Arc<ModelInfo>,
    limits: Limits,
) -> Result<crate::protocol::v2::InferRequest, ApiError> {
    let Some(pipeline) = serving.and_then(|s| s.pipeline.clone()) else {
        return crate::protocol::v2::decode(&body, header_len, info, limits);
    };
    let info = info.clone();
    tokio::task::spawn_blocking(move || {
        crate::protocol::v2::decode_with_images(&body, header_len, &info, limits, Some(&pipeline))
    })
    .await
    .map_err(|_| ApiError::internal("the image decoding task failed"))?
}

/// The `/predict` body with class names and top-k confidences, when classes are configured.
pub fn encode_predict(
    serving: Option<&Serving>,
    info: &ModelInfo,
    outputs: &[Tensor],
    n: usize,
    files: Option<&[String]>,
) -> Option<Vec<u8>> {
    serving?.classes.as_ref()?.encode_predict(info, outputs, n, files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TensorSpec;

    fn model(shape: Vec<i64>) -> ModelInfo {
        ModelInfo {
            name: "m".into(),
            version: "1".into(),
            inputs: vec![TensorSpec { name: "x".into(), datatype: DataType::F32, shape }],
            outputs: vec![TensorSpec { name: "y".into(), datatype: DataType::F32, shape: vec![-1, 2] }],
            class_labels: None,
        }
    }

    fn png(w: u32, h: u32, f: impl Fn(u32, u32) -> [u8; 3]) -> Vec<u8> {
        let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb(f(x, y)));
        let mut out = Cursor::new(Vec::new());
        DynamicImage::ImageRgb8(img).write_to(&mut out, image::ImageFormat::Png).expect("encode png");
        out.into_inner()
    }

    fn jpeg(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 7) as u8, (y * 5) as u8, 128]));
        let mut out = Cursor::new(Vec::new());
        DynamicImage::ImageRgb8(img).write_to(&mut out, image::ImageFormat::Jpeg).expect("encode jpeg");
        out.into_inner()
    }

    #[test]
    fn parses_the_compact_form() {
        let p = Preprocess::parse("resize=48x192,mean=0.5,0.5,0.5,std=0.5,0.5,0.5,layout=nchw,channels=bgr").unwrap();
        assert_eq!(p.resize, Some(Resize::Exact { height: 48, width: 192 }));
        assert_eq!(p.mean, vec![0.5, 0.5, 0.5]);
        assert_eq!(p.std, vec![0.5, 0.5, 0.5]);
        assert_eq!(p.layout, Some(Layout::Nchw));
        assert_eq!(p.channels, ChannelOrder::Bgr);
        let p = Preprocess::parse("resize=256; crop=224x224; mean=0.485,0.456,0.406; std=0.229,0.224,0.225").unwrap();
        assert_eq!(p.resize, Some(Resize::Shorter(256)));
        assert_eq!(p.crop, Some((224, 224)));
        assert_eq!(Preprocess::parse("auto").unwrap(), Preprocess::default());
        assert_eq!(Preprocess::parse("").unwrap(), Preprocess::default());
        for bad in ["resize=0x4", "resize=axb", "mean=1,2", "std=0", "layout=chw", "colour=rgb", "nchw", "scale=x"] {
            assert!(Preprocess::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn resolves_against_the_model() {
        let p = Preprocess::parse("resize=48x192").unwrap();
        let pl = Pipeline::new(&p, &model(vec![-1, 3, -1, -1])).unwrap();
        assert_eq!((pl.layout, pl.channels, pl.height, pl.width), (Layout::Nchw, 3, 48, 192));
        let pl = Pipeline::new(&Preprocess::default(), &model(vec![-1, 224, 224, 3])).unwrap();
        assert_eq!((pl.layout, pl.height, pl.width), (Layout::Nhwc, 224, 224));
        let e = Pipeline::new(&Preprocess::default(), &model(vec![-1, 3, -1, -1])).unwrap_err();
        assert!(e.contains("dynamic height or width; set resize"), "{e}");
        let e = Pipeline::new(&Preprocess::parse("resize=10x10").unwrap(), &model(vec![1, 3, 48, 192])).unwrap_err();
        assert!(e.contains("produces 10x10"), "{e}");
        let e = Pipeline::new(&Preprocess::default(), &model(vec![-1, 4])).unwrap_err();
        assert!(e.contains("no FP32 rank-4 image input"), "{e}");
        let e = Pipeline::new(&Preprocess::parse("resize=256").unwrap(), &model(vec![-1, 3, 224, 224])).unwrap_err();
        assert!(e.contains("needs crop"), "{e}");
    }

    #[test]
    fn normalises_in_layout_and_channel_order() {
        // 2x1 image: red then blue, no resize needed.
        let bytes = png(2, 1, |x, _| if x == 0 { [255, 0, 0] } else { [0, 0, 255] });
        let p = Preprocess::parse("mean=0.5,std=0.5").unwrap();
        let pl = Pipeline::new(&p, &model(vec![-1, 3, 1, 2])).unwrap();
        let t = pl.tensor(&[("a".into(), &bytes)]).unwrap();
        assert_eq!(t.shape, vec![1, 3, 1, 2]);
        assert_eq!(t.data, TensorData::F32(vec![1.0, -1.0, -1.0, -1.0, -1.0, 1.0]));
        let p = Preprocess::parse("channels=bgr,scale=1").unwrap();
        let pl = Pipeline::new(&p, &model(vec![-1, 1, 2, 3])).unwrap();
        assert_eq!(pl.layout, Layout::Nhwc);
        let t = pl.tensor(&[("a".into(), &bytes)]).unwrap();
        assert_eq!(t.data, TensorData::F32(vec![0.0, 0.0, 255.0, 255.0, 0.0, 0.0]));
    }

    #[test]
    fn resize_and_centre_crop() {
        let bytes = jpeg(64, 32);
        let p = Preprocess::parse("resize=16,crop=16x16").unwrap();
        let pl = Pipeline::new(&p, &model(vec![-1, 3, 16, 16])).unwrap();
        let t = pl.tensor(&[("a".into(), &bytes), ("b".into(), &bytes)]).unwrap();
        assert_eq!(t.shape, vec![2, 3, 16, 16]);
        assert_eq!(t.data.len(), 2 * 3 * 16 * 16);
        let p = Preprocess::parse("crop=40x40").unwrap();
        let pl = Pipeline::new(&p, &model(vec![-1, 3, 40, 40])).unwrap();
        let e = pl.tensor(&[("small.jpg".into(), &bytes)]).unwrap_err().message;
        assert!(e.contains("image 0 (small.jpg)") && e.contains("smaller than the 40x40 crop"), "{e}");
    }

    #[test]
    fn refuses_what_is_not_a_jpeg_or_png() {
        for (bytes, what) in [
            (&b"GIF89a\x01\x00"[..], "a GIF image"),
            (&b"{\"inputs\": []}"[..], "a text document"),
            (&b""[..], "an empty file"),
            (&b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"[..], "corrupt or unsupported Png image"),
            (&b"\xff\xd8\xff\xe0garbage"[..], "corrupt or unsupported Jpeg image"),
        ] {
            let e = decode_image(bytes, 1_000_000).unwrap_err();
            assert!(e.contains(what) && e.contains(ACCEPTED), "{e}");
        }
        let mut truncated = jpeg(32, 32);
        truncated.truncate(truncated.len() / 3);
        // A truncated JPEG either decodes partially (zune-jpeg fills the rest) or is refused;
        // it must never panic.
        let _ = decode_image(&truncated, 1_000_000);
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFFu32;
        for b in data {
            crc ^= u32::from(*b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
            }
        }
        !crc
    }

    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut c = kind.to_vec();
        c.extend_from_slice(data);
        out.extend_from_slice(&c);
        out.extend_from_slice(&crc32(&c).to_be_bytes());
    }

    /// A PNG that claims `w`x`h` pixels, with a tiny zlib stream (a decompression bomb's header).
    pub(crate) fn bomb_png(w: u32, h: u32) -> Vec<u8> {
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&w.to_be_bytes());
        ihdr.extend_from_slice(&h.to_be_bytes());
        ihdr.extend_from_slice(&[8, 0, 0, 0, 0]); // 8-bit greyscale
        chunk(&mut out, b"IHDR", &ihdr);
        // zlib: an empty stored block stream; the decoder would need w*h bytes of it.
        chunk(&mut out, b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]);
        chunk(&mut out, b"IEND", &[]);
        out
    }

    #[test]
    fn decompression_bombs_are_refused_before_decoding() {
        // 60000 x 60000 = 3600 megapixels declared in a 57-byte file.
        let bomb = bomb_png(60_000, 60_000);
        assert!(bomb.len() < 100);
        let e = decode_image(&bomb, 40_000_000).unwrap_err();
        assert!(e.contains("60000x60000") && e.contains("over the limit of 40 megapixels"), "{e}");
        // Just over a small limit is refused the same way.
        let e = decode_image(&bomb_png(2001, 1000), 2_000_000).unwrap_err();
        assert!(e.contains("over the limit of 2.0 megapixels"), "{e}");
        // JPEG: a real file whose SOF0 header is patched to claim 65000 x 65000.
        let mut j = jpeg(16, 16);
        let sof = j.windows(2).position(|w| w == [0xFF, 0xC0]).expect("SOF0");
        j[sof + 5..sof + 9].copy_from_slice(&[0xFD, 0xE8, 0xFD, 0xE8]);
        let e = decode_image(&j, 40_000_000).unwrap_err();
        assert!(e.contains("too large") || e.contains("over the limit"), "{e}");
    }

    #[test]
    fn base64_variants() {
        let bytes = png(1, 1, |_, _| [1, 2, 3]);
        let std = base64::engine::general_purpose::STANDARD.encode(&bytes);
        assert_eq!(base64_image(&std).unwrap(), bytes);
        assert_eq!(base64_image(&format!("data:image/png;base64,{std}")).unwrap(), bytes);
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&bytes);
        assert_eq!(base64_image(&url).unwrap(), bytes);
        assert!(base64_image("not base64!").unwrap_err().contains(ACCEPTED));
    }

    #[test]
    fn v2_bytes_inputs_become_the_image_tensor() {
        let pl = Pipeline::new(&Preprocess::default(), &model(vec![-1, 3, 8, 8])).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(png(10, 10, |_, _| [255, 255, 255]));
        let limits = Limits { max_rows: 2 };
        let t = Tensor { name: "x".into(), shape: vec![2], data: TensorData::Bytes(vec![b64.clone(), b64.clone()]) };
        let out = pl.convert_v2(vec![t], limits).unwrap();
        assert_eq!(out[0].shape, vec![2, 3, 8, 8]);
        assert_eq!(out[0].data, TensorData::F32(vec![1.0; 2 * 3 * 64]));
        let t = Tensor { name: "x".into(), shape: vec![3], data: TensorData::Bytes(vec![b64.clone(); 3]) };
        assert!(pl.convert_v2(vec![t], limits).unwrap_err().message.contains("exceeds the limit of 2 rows"));
        let t = Tensor { name: "x".into(), shape: vec![1], data: TensorData::Bytes(vec!["R0lGODlh".into()]) };
        let e = pl.convert_v2(vec![t], limits).unwrap_err().message;
        assert!(e.contains("element 0") && e.contains("a GIF image") && e.contains(ACCEPTED), "{e}");
    }
}
