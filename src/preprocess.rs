//! Image preprocessing for MobileNetV5: decode, resize to the configured square size (bilinear,
//! no aspect preservation, as Gemma 3n's processor does), rescale to [0, 1]. No mean/std
//! normalisation. Output is a `[3, size, size]` tensor.

use crate::error::{Error, Result};
use crate::tensor::Tensor;
use image::imageops::FilterType;
use std::path::Path;

/// Images larger than this many pixels (before resizing) are refused rather than decoded.
pub const MAX_INPUT_PIXELS: u64 = 64 * 1024 * 1024;

/// Largest side accepted for an already preprocessed pixel array (4x the 768 maximum the
/// architecture is built for; larger inputs would need tens of GB of activations).
pub const MAX_PIXELS_SIDE: usize = 3072;

/// Decodes an image file and preprocesses it to `[3, size, size]` in [0, 1].
pub fn load_image(path: &Path, size: usize) -> Result<Tensor> {
    let err = |msg: String| Error::Image {
        path: path.to_path_buf(),
        msg,
    };
    let reader = image::ImageReader::open(path)
        .map_err(|e| Error::io(path, e))?
        .with_guessed_format()
        .map_err(|e| Error::io(path, e))?;
    let (w, h) = reader
        .into_dimensions()
        .map_err(|e| err(format!("cannot read image: {e}")))?;
    if (w as u64) * (h as u64) > MAX_INPUT_PIXELS {
        return Err(err(format!(
            "{w}x{h} is larger than the {MAX_INPUT_PIXELS}-pixel limit"
        )));
    }
    let img = image::ImageReader::open(path)
        .map_err(|e| Error::io(path, e))?
        .with_guessed_format()
        .map_err(|e| Error::io(path, e))?
        .decode()
        .map_err(|e| err(format!("cannot decode image: {e}")))?;
    Ok(preprocess(&img.to_rgb8(), size))
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

/// Loads a preprocessed `[3, H, W]` array from `.npy` (used by parity tests: no resize involved).
pub fn load_pixels_npy(path: &Path) -> Result<Tensor> {
    let t = crate::npy::read_f32(path)?;
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
