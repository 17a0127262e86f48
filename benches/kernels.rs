//! `cargo bench --bench kernels`: the integer linear kernels at every level this CPU has, beside
//! float32, on an LFM2-1.2B FFN shape (the same measurement as `autoneural bench kernels`, one
//! table per level so the levels can be compared in one run).

use autoneural::bench::{kernels, Report};
use autoneural::quant::kernels::available;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let threads = rayon::current_num_threads();
    let mut report = Report::default();
    for level in available() {
        report.kernels.extend(kernels::run(
            [8192, 2048],
            &[1, 64],
            level,
            threads,
            &|_| {},
        )?);
    }
    print!("{}", report.table());
    Ok(())
}
