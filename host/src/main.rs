//! The `wasm-runner` binary: parse flags, install logging, run the subcommand, and turn its
//! result into an exit code.

use std::process::ExitCode;

use clap::Parser;

use wasm_runner::commands::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    install_tracing();

    match cli.execute() {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(err.exit_code())
        }
    }
}

/// Logs go to stderr so stdout carries only a command's result. `RUST_LOG` picks what is shown
/// (default: warnings and errors); `RUST_LOG=wasm_runner::guest=debug` shows what tasks print.
fn install_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // Colours only on a terminal: escape codes in a log file or a collector are noise.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
