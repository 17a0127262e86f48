//! `cargo bench --bench gram`: the GPTQ Gram matrix (`X^T X` of calibration inputs), the
//! one-dot-product-at-a-time reference against the tiled kernel, on one thread, at input widths of
//! the real MobileNetV5-300M encoder (pointwise convolutions of 1024 / 2048 channels over a 24x24 or
//! 16x16 map). Both give the same bits (`quant::gram` tests); this measures how long they take.

use autoneural::quant::gram::{gram, gram_reference};
use std::time::Instant;

fn main() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("a one-thread pool");
    println!(
        "{:>6} {:>6} {:>14} {:>14} {:>8}",
        "k", "n", "reference s", "tiled s", "speedup"
    );
    for (k, n) in [(1024, 576), (2048, 256), (2048, 576)] {
        // Deterministic inputs without a random-number dependency in the bench.
        let p: Vec<f64> = (0..k * n)
            .map(|i| ((i as u64).wrapping_mul(2654435761) % 1000) as f64 / 997.0 - 0.5)
            .collect();
        let mut x = vec![0.0; k * n];
        for i in 0..k {
            for t in 0..n {
                x[t * k + i] = p[i * n + t];
            }
        }
        let (a, ta) = pool.install(|| {
            let t = Instant::now();
            (gram_reference(&p, k, n), t.elapsed().as_secs_f64())
        });
        let (b, tb) = pool.install(|| {
            let t = Instant::now();
            (gram(&x, n, k), t.elapsed().as_secs_f64())
        });
        assert!(a.iter().zip(&b).all(|(u, v)| u.to_bits() == v.to_bits()));
        println!("{k:>6} {n:>6} {ta:>14.3} {tb:>14.3} {:>7.1}x", ta / tb);
    }
}
