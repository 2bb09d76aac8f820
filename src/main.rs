use std::process::ExitCode;

use clap::Parser;
use snapshot_operator::cli::Cli;

fn main() -> ExitCode {
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
            eprintln!("{}", snapshot_operator::cli::render_error(&e));
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
