//! Image preprocessing: decode, resize to the configured square size (bilinear, no aspect
//! preservation, as Gemma 3n's processor does), rescale to [0, 1], then the model directory's
//! mean/std normalisation when its `preprocessor_config.json` asks for one (InternVL's processor
//! uses ImageNet's; MobileNetV5 and the project's own models use none). Output is a
//! `[3, size, size]` tensor.

use crate::error::{Error, Result};
use crate::tensor::Tensor;
use image::imageops::FilterType;
use std::path::Path;

/// Images larger than this many pixels (before resizing) are refused rather than decoded.
pub const MAX_INPUT_PIXELS: u64 = 64 * 1024 * 1024;

/// Largest side accepted for an already preprocessed pixel array (4x the 768 maximum the
/// architecture is built for; larger inputs would need tens of GB of activations).
pub const MAX_PIXELS_SIDE: usize = 3072;

/// Longest side accepted for an image file. Together with [`MAX_INPUT_PIXELS`] it bounds the
/// resize's intermediate buffer (the vertical pass keeps the input width at the output height).
pub const MAX_INPUT_SIDE: u32 = 16384;

/// Most bytes an image decoder may allocate.
const MAX_DECODER_ALLOC: u64 = 1 << 30;

/// Decodes an image file and preprocesses it to `[3, size, size]` in [0, 1].
pub fn load_image(path: &Path, size: usize) -> Result<Tensor> {
    let bytes = crate::files::read_bytes(path, crate::files::limits::IMAGE)?;
    let img = decode_image(&bytes).map_err(|msg| Error::Image {
        path: path.to_path_buf(),
        msg,
    })?;
    Ok(preprocess(&img, size))
}

/// Decodes an encoded image (PNG, JPEG, WebP, BMP, GIF, TIFF) to RGB, bounding its size before
/// any pixel is decoded and refusing truncated files.
pub fn decode_image(bytes: &[u8]) -> std::result::Result<image::RgbImage, String> {
    let reader = || {
        image::ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| format!("cannot read image: {e}"))
    };
    let r = reader()?;
    let format = r.format().ok_or_else(|| {
        "not an image in a supported format (PNG, JPEG, WebP, BMP, GIF, TIFF)".to_string()
    })?;
    let (w, h) = r
        .into_dimensions()
        .map_err(|e| format!("cannot read image: {e}"))?;
    if w == 0 || h == 0 {
        return Err(format!("{w}x{h} image has no pixels"));
    }
    if w > MAX_INPUT_SIDE || h > MAX_INPUT_SIDE || (w as u64) * (h as u64) > MAX_INPUT_PIXELS {
        return Err(format!(
            "{w}x{h} is larger than the limit ({MAX_INPUT_SIDE} pixels a side, \
             {MAX_INPUT_PIXELS} pixels in all)"
        ));
    }
    if format == image::ImageFormat::Jpeg && !jpeg_is_complete(bytes) {
        return Err("truncated JPEG (no end-of-image marker after the scan data)".into());
    }
    let mut r = reader()?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_INPUT_SIDE);
    limits.max_image_height = Some(MAX_INPUT_SIDE);
    limits.max_alloc = Some(MAX_DECODER_ALLOC);
    r.limits(limits);
    let img = r
        .decode()
        .map_err(|e| format!("cannot decode image: {e}"))?;
    Ok(img.to_rgb8())
}

/// A JPEG's entropy-coded data ends with an EOI marker (FF D9); a truncated file (which decoders
/// silently fill with gray) has none after its first start-of-scan marker (FF DA).
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let find = |from: usize, m: [u8; 2]| {
        bytes[from..]
            .windows(2)
            .position(|w| w == m)
            .map(|i| i + from)
    };
    match find(0, [0xFF, 0xDA]) {
        Some(sos) => bytes[sos..].windows(2).rev().any(|w| w == [0xFF, 0xD9]),
        None => false,
    }
}

/// Resizes an RGB image to `size x size` and lays it out as `[3, size, size]` floats in [0, 1].
pub fn preprocess(img: &image::RgbImage, size: usize) -> Tensor {
    let resized = if img.width() as usize == size && img.height() as usize == size {
        img.clone()
    } else {
        image::imageops::resize(img, size as u32, size as u32, FilterType::Triangle)
    };
    let plane = size * size;
    let mut data = vec![0.0f32; 3 * plane];
    for (i, px) in resized.pixels().enumerate() {
        for c in 0..3 {
            data[c * plane + i] = px.0[c] as f32 / 255.0;
        }
    }
    Tensor::from_parts(&[3, size, size], data)
}

/// Per-channel `(x - mean) / std` on [0, 1] pixels, from a Hugging Face image processor's
/// `image_mean` / `image_std` with `do_normalize`.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageNorm {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl ImageNorm {
    /// Reads `preprocessor_config.json`: `Some` when it normalizes, `None` when it does not
    /// (or the file is absent).
    pub fn from_file(path: &Path) -> Result<Option<Self>> {
        if !path.exists() {
            return Ok(None);
        }
        let text = crate::files::read_text(path, crate::files::limits::JSON)?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::corrupt(path, format!("invalid JSON: {e}")))?;
        if v.get("do_normalize").and_then(|d| d.as_bool()) == Some(false) {
            return Ok(None);
        }
        let triple = |key: &str| -> Result<Option<[f32; 3]>> {
            let Some(x) = v.get(key).filter(|x| !x.is_null()) else {
                return Ok(None);
            };
            let bad = || Error::corrupt(path, format!("`{key}` must be three numbers"));
            let a = x.as_array().ok_or_else(bad)?;
            if a.len() != 3 {
                return Err(bad());
            }
            let mut out = [0.0f32; 3];
            for (o, e) in out.iter_mut().zip(a) {
                *o = e.as_f64().ok_or_else(bad)? as f32;
            }
            Ok(Some(out))
        };
        match (triple("image_mean")?, triple("image_std")?) {
            (None, None) => Ok(None),
            (mean, std) => {
                let norm = Self {
                    mean: mean.unwrap_or([0.0; 3]),
                    std: std.unwrap_or([1.0; 3]),
                };
                if norm.std.iter().any(|s| !(s.is_finite() && *s > 0.0))
                    || norm.mean.iter().any(|m| !m.is_finite())
                {
                    return Err(Error::corrupt(
                        path,
                        "image_std must be positive and image_mean finite",
                    ));
                }
                Ok(Some(norm))
            }
        }
    }

    /// The range `[0, 1]` pixels take after normalisation (over all channels).
    pub fn range(&self) -> (f32, f32) {
        let ends = (0..3).flat_map(|c| [0.0, 1.0].map(|x| (x - self.mean[c]) / self.std[c]));
        ends.fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        })
    }

    /// Normalises `[3, H, W]` pixels in place.
    pub fn apply(&self, t: &mut Tensor) {
        let plane = t.numel() / 3;
        for (c, ch) in t.data_mut().chunks_exact_mut(plane).enumerate() {
            let (m, s) = (self.mean[c], self.std[c]);
            ch.iter_mut().for_each(|v| *v = (*v - m) / s);
        }
    }
}

/// Loads a preprocessed `[3, H, W]` array from `.npy` (used by parity tests: no resize involved).
pub fn load_pixels_npy(path: &Path) -> Result<Tensor> {
    check_pixels(crate::npy::read_f32(path)?, path)
}

/// Checks a preprocessed pixel array: `[3, H, W]`, within the size limit, finite.
pub fn check_pixels(t: Tensor, path: &Path) -> Result<Tensor> {
    if t.rank() != 3 || t.dim(0) != 3 {
        return Err(Error::input(format!(
            "{}: pixels must be a [3, H, W] float32 array, got shape {:?}",
            path.display(),
            t.shape()
        )));
    }
    if t.dim(1) > MAX_PIXELS_SIDE || t.dim(2) > MAX_PIXELS_SIDE {
        return Err(Error::input(format!(
            "{}: {}x{} pixels exceed the {MAX_PIXELS_SIDE}x{MAX_PIXELS_SIDE} input limit",
            path.display(),
            t.dim(1),
            t.dim(2)
        )));
    }
    if let Some(bad) = t.data().iter().find(|v| !v.is_finite()) {
        return Err(Error::input(format!(
            "{}: pixels contain {bad}",
            path.display()
        )));
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_channel_planar_and_rescaled() {
        let mut img = image::RgbImage::new(2, 2);
        img.put_pixel(1, 0, image::Rgb([255, 0, 51]));
        let t = preprocess(&img, 2);
        assert_eq!(t.shape(), &[3, 2, 2]);
        assert_eq!(t.data()[1], 1.0); // R plane, row 0, col 1
        assert_eq!(t.data()[4 + 1], 0.0); // G plane
        assert!((t.data()[8 + 1] - 0.2).abs() < 1e-6); // B plane
    }

    #[test]
    fn unreadable_image_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.png");
        std::fs::write(&p, b"not an image").unwrap();
        let e = load_image(&p, 32).unwrap_err().to_string();
        assert!(e.contains("x.png"), "{e}");
        assert!(load_image(&dir.path().join("missing.png"), 32).is_err());
    }
}

#[cfg(test)]
mod norm_tests {
    use super::*;

    fn norm_of(json: &str) -> Result<Option<ImageNorm>> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("preprocessor_config.json");
        std::fs::write(&p, json).unwrap();
        ImageNorm::from_file(&p)
    }

    #[test]
    fn reads_an_image_processors_normalisation() {
        // InternVL's processor (GotOcr2ImageProcessorFast): ImageNet mean/std.
        let n = norm_of(
            r#"{"do_normalize": true, "image_mean": [0.485, 0.456, 0.406],
                "image_std": [0.229, 0.224, 0.225], "size": {"height": 448, "width": 448}}"#,
        )
        .unwrap()
        .unwrap();
        let mut t = Tensor::from_parts(&[3, 1, 2], vec![0.485, 1.0, 0.456, 0.0, 0.406, 0.5]);
        n.apply(&mut t);
        assert_eq!(t.data()[0], 0.0);
        assert!((t.data()[1] - (1.0 - 0.485) / 0.229).abs() < 1e-6);
        assert!((t.data()[3] - (-0.456 / 0.224)).abs() < 1e-6);
        let (lo, hi) = n.range();
        assert!((lo - (-0.485 / 0.229)).abs() < 1e-6 && (hi - (1.0 - 0.406) / 0.225).abs() < 1e-6);
        assert_eq!(
            norm_of(r#"{"do_normalize": false, "image_mean": [0.5, 0.5, 0.5]}"#).unwrap(),
            None
        );
        assert_eq!(norm_of(r#"{"size": 224}"#).unwrap(), None);
        assert!(
            ImageNorm::from_file(Path::new("/nonexistent/preprocessor_config.json"))
                .unwrap()
                .is_none()
        );
        for bad in [
            r#"{"image_std": [0.2, 0.0, 0.2]}"#,
            r#"{"image_mean": [0.5]}"#,
            "{",
        ] {
            assert!(norm_of(bad).is_err(), "{bad}");
        }
    }
}
