//! The `autoneural` command line (see `cli`).

mod cli;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    // Die quietly on a closed pipe (`autoneural inspect | head`) like other command-line tools,
    // instead of panicking inside println!.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // Keep freed activation buffers in the heap instead of returning them to the OS: glibc maps
    // every large block anew by default, and the kernel's zeroing of fresh pages cost a quarter
    // of the integer vision encoder's time. Activations are freed and reallocated every op.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes the allocator; called before any allocation-heavy work.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = cli::Cli::parse();
    match cli::main(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line naming the problem; the cause chain joined with ": ".
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
