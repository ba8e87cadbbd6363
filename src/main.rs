//! The `eddydb` binary: parse flags, load configuration, start logging, run the server until
//! SIGINT or SIGTERM.

use clap::Parser;
use eddydb::config::{Cli, Config};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(&cli) {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("eddydb: invalid configuration:");
            for error in errors {
                eprintln!("  - {error}");
            }
            return std::process::ExitCode::FAILURE;
        }
    };
    eddydb::telemetry::init(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("eddydb: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(eddydb::server::run_until_signal(config)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("eddydb stopped: {e}");
            eprintln!("eddydb: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
