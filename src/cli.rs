//! The command line: `lcm` (or `lcm serve`) runs the service.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing::{error, warn};

use crate::config::Settings;
use crate::startup::{Application, shutdown_signal};
use crate::telemetry;

/// Trial Lifecycle Manager: schedules 5G drone trials and runs one engine per trial.
#[derive(Parser)]
#[command(name = "lcm", version)]
pub struct Cli {
    /// Configuration file layered over the built-in defaults.
    #[arg(long, global = true, env = "LCM_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// What to run.
#[derive(Subcommand)]
pub enum Command {
    /// Run the service (the default).
    Serve,
}

/// Parses the command line and runs it.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("lcm: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("lcm: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => runtime.block_on(serve(settings)),
    }
}

async fn serve(settings: Settings) -> ExitCode {
    let _guard = match telemetry::init(&settings.logging) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!(
                "lcm: configuration key `logging.dir`: cannot write logs to {}: {e}",
                settings.logging.dir.display()
            );
            return ExitCode::FAILURE;
        }
    };
    for warning in settings.warnings() {
        warn!("{}", warning);
    }
    let app = match Application::build(settings).await {
        Ok(app) => app,
        Err(e) => {
            error!("cannot start: {e}");
            eprintln!("lcm: {e}");
            return ExitCode::FAILURE;
        }
    };
    match app.run_until(shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("server error: {e}");
            ExitCode::FAILURE
        }
    }
}
