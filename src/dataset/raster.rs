//! Tiny raster helpers for the procedural datasets: filled shapes with hard edges, drawn on an
//! [`RgbImage`] in floating-point pixel coordinates (a pixel is inside a shape when its centre
//! is), seven-segment digits, gradients and a final lighting + noise pass. No fonts.

use image::{Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// An RGB colour.
pub type Colour = [u8; 3];

/// Linear mix of two colours: `t = 0` gives `a`, `t = 1` gives `b`.
pub fn mix(a: Colour, b: Colour, t: f32) -> Colour {
    let f = |x: u8, y: u8| {
        (x as f32 + (y as f32 - x as f32) * t)
            .round()
            .clamp(0.0, 255.0) as u8
    };
    [f(a[0], b[0]), f(a[1], b[1]), f(a[2], b[2])]
}

/// Seven-segment bits: a (top) = 1, b (top right) = 2, c (bottom right) = 4, d (bottom) = 8,
/// e (bottom left) = 16, f (top left) = 32, g (middle) = 64.
pub const DIGIT_SEGMENTS: [u8; 10] = [0x3F, 0x06, 0x5B, 0x4F, 0x66, 0x6D, 0x7D, 0x07, 0x7F, 0x6F];
/// The letter P on seven segments (a, b, e, f, g).
pub const SEGMENTS_P: u8 = 0x73;

/// Vertices of a regular `n`-gon of circumradius `r`, first vertex at angle `rot` (radians).
pub fn regular_polygon(cx: f32, cy: f32, r: f32, n: usize, rot: f32) -> Vec<(f32, f32)> {
    (0..n)
        .map(|k| {
            let a = rot + k as f32 * std::f32::consts::TAU / n as f32;
            (cx + r * a.cos(), cy + r * a.sin())
        })
        .collect()
}

/// A drawing surface.
pub struct Canvas {
    pub img: RgbImage,
}

impl Canvas {
    /// A square canvas filled with a vertical gradient from `top` to `bottom`.
    pub fn gradient(size: u32, top: Colour, bottom: Colour) -> Self {
        let mut img = RgbImage::new(size, size);
        let denom = (size.max(2) - 1) as f32;
        for y in 0..size {
            let c = mix(top, bottom, y as f32 / denom);
            for x in 0..size {
                img.put_pixel(x, y, Rgb(c));
            }
        }
        Canvas { img }
    }

    pub fn size(&self) -> f32 {
        self.img.width() as f32
    }

    /// Paints every pixel inside the box whose centre satisfies `inside`.
    fn fill_where(
        &mut self,
        (x0, y0, x1, y1): (f32, f32, f32, f32),
        c: Colour,
        inside: impl Fn(f32, f32) -> bool,
    ) {
        let (w, h) = (self.img.width() as i64, self.img.height() as i64);
        let xa = (x0.floor() as i64).max(0);
        let xb = (x1.ceil() as i64).min(w);
        let ya = (y0.floor() as i64).max(0);
        let yb = (y1.ceil() as i64).min(h);
        for y in ya..yb {
            for x in xa..xb {
                if inside(x as f32 + 0.5, y as f32 + 0.5) {
                    self.img.put_pixel(x as u32, y as u32, Rgb(c));
                }
            }
        }
    }

    /// Axis-aligned rectangle `[x0, x1) x [y0, y1)`.
    pub fn rect(&mut self, x0: f32, y0: f32, x1: f32, y1: f32, c: Colour) {
        let (xa, xb, ya, yb) = (x0.min(x1), x0.max(x1), y0.min(y1), y0.max(y1));
        self.fill_where((xa, ya, xb, yb), c, |x, y| {
            x >= xa && x < xb && y >= ya && y < yb
        });
    }

    /// Filled ellipse.
    pub fn ellipse(&mut self, cx: f32, cy: f32, rx: f32, ry: f32, c: Colour) {
        let (rx, ry) = (rx.max(0.5), ry.max(0.5));
        self.fill_where((cx - rx, cy - ry, cx + rx, cy + ry), c, |x, y| {
            let (dx, dy) = ((x - cx) / rx, (y - cy) / ry);
            dx * dx + dy * dy <= 1.0
        });
    }

    /// Filled disc.
    pub fn disc(&mut self, cx: f32, cy: f32, r: f32, c: Colour) {
        self.ellipse(cx, cy, r, r, c);
    }

    /// Annulus between radii `r_in` and `r_out`.
    pub fn ring(&mut self, cx: f32, cy: f32, r_out: f32, r_in: f32, c: Colour) {
        let (o2, i2) = (r_out * r_out, r_in * r_in);
        self.fill_where(
            (cx - r_out, cy - r_out, cx + r_out, cy + r_out),
            c,
            |x, y| {
                let d = (x - cx) * (x - cx) + (y - cy) * (y - cy);
                d <= o2 && d >= i2
            },
        );
    }

    /// Thick line segment with round caps.
    pub fn line(&mut self, x0: f32, y0: f32, x1: f32, y1: f32, width: f32, c: Colour) {
        let hw = (width / 2.0).max(0.5);
        let (dx, dy) = (x1 - x0, y1 - y0);
        let len2 = (dx * dx + dy * dy).max(1e-6);
        let bbox = (
            x0.min(x1) - hw,
            y0.min(y1) - hw,
            x0.max(x1) + hw,
            y0.max(y1) + hw,
        );
        self.fill_where(bbox, c, |x, y| {
            let t = (((x - x0) * dx + (y - y0) * dy) / len2).clamp(0.0, 1.0);
            let (px, py) = (x0 + t * dx - x, y0 + t * dy - y);
            px * px + py * py <= hw * hw
        });
    }

    /// Filled polygon (even-odd rule).
    pub fn polygon(&mut self, pts: &[(f32, f32)], c: Colour) {
        if pts.len() < 3 {
            return;
        }
        let fold = |f: fn(f32, f32) -> f32, init: f32, sel: fn(&(f32, f32)) -> f32| {
            pts.iter().map(sel).fold(init, f)
        };
        let bbox = (
            fold(f32::min, f32::INFINITY, |p| p.0),
            fold(f32::min, f32::INFINITY, |p| p.1),
            fold(f32::max, f32::NEG_INFINITY, |p| p.0),
            fold(f32::max, f32::NEG_INFINITY, |p| p.1),
        );
        self.fill_where(bbox, c, |x, y| {
            let mut inside = false;
            let mut j = pts.len() - 1;
            for i in 0..pts.len() {
                let (xi, yi) = pts[i];
                let (xj, yj) = pts[j];
                if (yi > y) != (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi {
                    inside = !inside;
                }
                j = i;
            }
            inside
        });
    }

    /// Seven-segment glyph `segments` in the box with top-left `(x, y)`, width `w`, height `h`.
    pub fn seven_segment(&mut self, segments: u8, x: f32, y: f32, w: f32, h: f32, c: Colour) {
        let t = (w * 0.22).max(1.0);
        let m = y + h / 2.0;
        let rects = [
            (x + t, y, x + w - t, y + t),                 // a
            (x + w - t, y, x + w, m),                     // b
            (x + w - t, m, x + w, y + h),                 // c
            (x + t, y + h - t, x + w - t, y + h),         // d
            (x, m, x + t, y + h),                         // e
            (x, y, x + t, m),                             // f
            (x + t, m - t / 2.0, x + w - t, m + t / 2.0), // g
        ];
        for (bit, r) in rects.iter().enumerate() {
            if segments & (1 << bit) != 0 {
                self.rect(r.0, r.1, r.2, r.3, c);
            }
        }
    }

    /// A right-aligned number of at most `slots` digits (no leading zeros); each digit box is
    /// `w` x `h` with `gap` between boxes; `(x, y)` is the top-left of the first slot.
    #[allow(clippy::too_many_arguments)]
    pub fn number(
        &mut self,
        value: u32,
        slots: usize,
        x: f32,
        y: f32,
        w: f32,
        h: f32,
        gap: f32,
        c: Colour,
    ) {
        let digits: Vec<u8> = value.to_string().bytes().map(|b| b - b'0').collect();
        let skip = slots.saturating_sub(digits.len());
        for (k, d) in digits.iter().take(slots).enumerate() {
            let sx = x + (skip + k) as f32 * (w + gap);
            self.seven_segment(DIGIT_SEGMENTS[*d as usize], sx, y, w, h, c);
        }
    }

    /// Global lighting and sensor noise: `v' = ((v - 128) * contrast + 128) * brightness + n`,
    /// with `n` a sum of three uniforms (roughly Gaussian) of amplitude `noise`.
    pub fn finish(
        mut self,
        brightness: f32,
        contrast: f32,
        noise: f32,
        noise_seed: u64,
    ) -> RgbImage {
        let mut rng = ChaCha8Rng::seed_from_u64(noise_seed);
        for p in self.img.pixels_mut() {
            for v in p.0.iter_mut() {
                let n = if noise > 0.0 {
                    let u: f32 = rng.random::<f32>() + rng.random::<f32>() + rng.random::<f32>();
                    (u - 1.5) * noise
                } else {
                    0.0
                };
                let x = ((*v as f32 - 128.0) * contrast + 128.0) * brightness + n;
                *v = x.round().clamp(0.0, 255.0) as u8;
            }
        }
        self.img
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_cover_their_centres_only() {
        let mut c = Canvas::gradient(64, [0; 3], [0; 3]);
        c.disc(32.0, 32.0, 8.0, [255, 0, 0]);
        assert_eq!(c.img.get_pixel(32, 32).0, [255, 0, 0]);
        assert_eq!(c.img.get_pixel(32, 45).0, [0, 0, 0]);
        c.rect(0.0, 0.0, 4.0, 4.0, [0, 255, 0]);
        assert_eq!(c.img.get_pixel(3, 3).0, [0, 255, 0]);
        assert_eq!(c.img.get_pixel(4, 4).0, [0, 0, 0]);
        c.polygon(&regular_polygon(50.0, 50.0, 6.0, 8, 0.0), [0, 0, 255]);
        assert_eq!(c.img.get_pixel(50, 50).0, [0, 0, 255]);
        // Out-of-bounds drawing is clipped, not a panic.
        c.line(-10.0, -10.0, 100.0, 100.0, 3.0, [9, 9, 9]);
    }

    #[test]
    fn seven_segment_digits_differ() {
        let render = |d: usize| {
            let mut c = Canvas::gradient(32, [0; 3], [0; 3]);
            c.seven_segment(DIGIT_SEGMENTS[d], 4.0, 4.0, 12.0, 22.0, [255; 3]);
            c.img.into_raw()
        };
        let all: Vec<_> = (0..10).map(render).collect();
        for i in 0..10 {
            for j in i + 1..10 {
                assert_ne!(all[i], all[j], "digits {i} and {j} render the same");
            }
        }
    }
}
