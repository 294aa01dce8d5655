//! The command line: `lcm` (or `lcm serve`) runs the service; `lcm demo` runs one trial
//! against simulated components and shows its steps; `lcm bench` measures the LCM under load.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tracing::{error, warn};

use crate::bench::{self, BenchOptions};
use crate::config::{self, ConfigFile, FileOrigin, Settings};
use crate::demo::{self, DemoOptions};
use crate::startup::{Application, shutdown_signal};
use crate::store::sqlite::Synchronous;
use crate::telemetry;

/// Trial Lifecycle Manager: schedules 5G drone trials and runs one engine per trial.
#[derive(Parser)]
#[command(
    name = "lcm",
    version,
    long_about = "Trial Lifecycle Manager: schedules 5G drone trials and runs one engine per \
trial.\n\nWithout a command it runs the service (`lcm serve`): a REST API on server.bind \
(0.0.0.0:5000 by default) that schedules trials and drives each one through the trial \
repository, trial enforcement and KPI monitoring. Settings come from the built-in defaults, \
config/default.toml in the working directory, the --config file and LCM__SECTION__KEY \
environment variables, in that order; an unknown key or a bad value stops start-up naming it.",
    after_help = "Example:\n  LCM__AUTH__API_KEY=a-long-random-key lcm --config /etc/lcm/lcm.toml\n\n\
To try it without a platform: lcm demo"
)]
struct Cli {
    /// Configuration file layered over the built-in defaults; without it, the file the
    /// `LCM_CONFIG` environment variable names (`serve` only; the demo and the benchmark use
    /// the built-in defaults).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

/// What to run.
#[derive(Subcommand)]
enum Command {
    /// Run the service (the default).
    Serve,
    /// Run one trial from schedule to FINISHED against simulated trial components on
    /// 127.0.0.1, showing each step; then keep serving until Ctrl-C.
    #[command(
        long_about = "Runs one trial from schedule to FINISHED against simulated trial \
components on 127.0.0.1, printing each step as it happens, then keeps serving the API (with \
its docs at http://127.0.0.1:<port>/) until Ctrl-C. It needs no platform and no \
configuration: the built-in defaults are used, and its store and logs live in a temporary \
directory, which it prints (--keep keeps it). While it serves, the simulated registry takes \
any other trial id for an approved trial starting a few seconds ahead, so every example of the \
README can be tried against it.",
        after_help = "Example:\n  lcm demo --port 5050 --exit"
    )]
    Demo {
        /// Port of the Lifecycle Manager on 127.0.0.1.
        #[arg(long, default_value_t = 5000)]
        port: u16,
        /// Exit once the trial has ended instead of serving.
        #[arg(long)]
        exit: bool,
        /// Keep the temporary directory of the store and logs (and its failure files) when
        /// the demo exits; its path is printed again then.
        #[arg(long)]
        keep: bool,
        /// Abort the trial once it is ACTIVE instead of finishing it, to show the clean-up
        /// that undoes what it deployed.
        #[arg(long)]
        abort: bool,
    },
    /// Measure the Lifecycle Manager under load against simulated trial components on
    /// 127.0.0.1 and print a table.
    #[command(
        long_about = "Measures the Lifecycle Manager under load: runs complete trials against \
simulated trial components on 127.0.0.1 through the REST API, N in flight at once, and prints \
throughput, overhead per step, CPU per trial, memory, threads and the bytes the store writes \
per step. With --idle it instead holds that many engines at the IDLE waiting point and measures \
their memory and what the pollers' reads (`GET /status`, `GET /trial/{id}/status`) cost; with \
--startup it times a start-up on a store holding that many ended trials. It uses the built-in \
defaults, not a configuration file.",
        after_help = "Example:\n  lcm bench --trials 1000 --concurrency 100"
    )]
    Bench(BenchArgs),
}

/// Options of `lcm bench`.
#[derive(clap::Args)]
struct BenchArgs {
    /// Complete trials to run.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    trials: u64,
    /// Trials in flight at once.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    concurrency: u64,
    /// Instead, hold this many engines at the IDLE waiting point and measure their memory.
    #[arg(long, conflicts_with_all = ["trials", "concurrency", "startup"], value_parser = clap::value_parser!(u64).range(1..=100_000))]
    idle: Option<u64>,
    /// Instead, time a start-up on a store holding this many ended trials (and 100 live ones).
    #[arg(long, conflicts_with_all = ["trials", "concurrency", "idle"], value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    startup: Option<u64>,
    /// Attempts of the retry policy (`executor.retry.max_attempts`; 1 turns retries off).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=100))]
    max_attempts: u32,
    /// Pause of the simulated trial enforcement before each callback, in milliseconds.
    #[arg(long, default_value_t = 10)]
    callback_delay_ms: u64,
    /// When a commit reaches the disk (`store.synchronous`).
    #[arg(long, default_value = "normal", value_parser = ["normal", "full"])]
    synchronous: String,
}

impl Command {
    /// The name of a command that runs on the built-in defaults, reading no configuration.
    fn own_defaults(&self) -> Option<&'static str> {
        match self {
            Command::Demo { .. } => Some("demo"),
            Command::Bench(_) => Some("bench"),
            Command::Serve => None,
        }
    }
}

/// Parses the command line and runs it.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Serve);
    // An error about the file says which of the two named it. A `--config` given on the
    // command line is taken over the variable, empty or not.
    let config = match (cli.config, std::env::var_os("LCM_CONFIG")) {
        (Some(path), _) => Some(ConfigFile {
            path,
            origin: FileOrigin::Flag,
        }),
        // Nothing to read, for a command that reads no configuration anyway.
        (None, Some(path)) if path.is_empty() && command.own_defaults().is_some() => None,
        (None, Some(path)) if path.is_empty() => {
            eprintln!(
                "lcm: the environment variable LCM_CONFIG is empty: give the configuration file's path, or unset it to run without one"
            );
            return ExitCode::FAILURE;
        }
        (None, Some(path)) => Some(ConfigFile {
            path: PathBuf::from(path),
            origin: FileOrigin::Variable,
        }),
        (None, None) => None,
    };
    if let (Some(name), Some(ConfigFile { path, origin })) = (command.own_defaults(), &config) {
        let given = match origin {
            FileOrigin::Flag => "--config",
            FileOrigin::Variable => "LCM_CONFIG",
        };
        eprintln!(
            "lcm {name}: {} is not read: {given} (like the LCM__… variables) is for `serve`; the {name} runs on the built-in defaults",
            path.display()
        );
    }
    let command = match command {
        // The benchmark builds its own runtimes, to tell the LCM's threads from its own.
        Command::Bench(args) => {
            return bench::run(BenchOptions {
                trials: args.trials as usize,
                concurrency: args.concurrency as usize,
                idle: args.idle.map(|n| n as usize),
                callback_delay: Duration::from_millis(args.callback_delay_ms),
                max_attempts: args.max_attempts,
                startup: args.startup.map(|n| n as usize),
                synchronous: match args.synchronous.as_str() {
                    "full" => Synchronous::Full,
                    _ => Synchronous::Normal,
                },
            });
        }
        command => command,
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
    match command {
        Command::Demo {
            port,
            exit,
            keep,
            abort,
        } => runtime.block_on(demo::run(DemoOptions {
            port,
            exit,
            keep,
            abort,
        })),
        Command::Serve | Command::Bench(_) => runtime.block_on(serve(config)),
    }
}

async fn serve(config: Option<ConfigFile>) -> ExitCode {
    // SIGHUP ends a process by default, and the keys are reloaded on it only once they are
    // loaded, after the store's recovery: caught from here on (tokio keeps its handler for the
    // process's life), a reload sent while the service starts is not its end.
    #[cfg(unix)]
    let _ = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    let settings = match Settings::load(config.as_ref()) {
        Ok(settings) => settings,
        Err(e) => {
            // One problem a line, every line marked as ours.
            for line in e.to_string().lines() {
                eprintln!("lcm: {line}");
            }
            return ExitCode::FAILURE;
        }
    };
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
    for warning in settings
        .warnings()
        .into_iter()
        .chain(config::stray_variables())
    {
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
