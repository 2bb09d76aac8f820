use std::process::ExitCode;

use clap::Parser;
use snapshot_operator::cli::Cli;

fn main() -> ExitCode {
    // Buffers of 1 MiB and more (S3 parts, pipe chunks) come straight from mmap, so freed ones
    // go back to the system at once and peak memory stays what is in use, not what glibc's
    // growing mmap threshold would keep in its arenas.
    // SAFETY: mallopt only changes allocator tuning; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
    let cli = Cli::parse();
    cli.init_logging();
    snapshot_operator::tls::install_crypto_provider();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime starts");
    let code = match runtime.block_on(cli.run()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{}", snapshot_operator::format::render_error(&e));
            match e {
                snapshot_operator::cli::CliError::Interrupted(_) => ExitCode::from(130),
                _ => ExitCode::FAILURE,
            }
        }
    };
    // Blocking work still running after an interruption must not delay the exit.
    runtime.shutdown_background();
    code
}
