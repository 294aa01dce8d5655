//! Logging set up once per process: stdout for `docker logs`, and a daily rolling file in
//! `logging.dir` written by a non-blocking writer (SPEC §10).

use std::io;

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::{EnvFilter, Layer, fmt, layer::SubscriberExt, util::SubscriberInitExt};

use crate::config::{LogFormat, LoggingSettings};

/// Installs the global subscriber. Keep the returned guard alive for the life of the process:
/// dropping it flushes and stops the file writer.
pub fn init(settings: &LoggingSettings) -> io::Result<WorkerGuard> {
    std::fs::create_dir_all(&settings.dir)?;
    let appender = tracing_appender::rolling::Builder::new()
        .rotation(tracing_appender::rolling::Rotation::DAILY)
        .filename_prefix("lcm")
        .filename_suffix("log")
        .build(&settings.dir)
        .map_err(io::Error::other)?;
    let (file_writer, guard) = tracing_appender::non_blocking(appender);
    let filter = EnvFilter::try_new(&settings.level).unwrap_or_else(|_| EnvFilter::new("info"));

    let (stdout_layer, file_layer) = match settings.format {
        LogFormat::Text => (
            fmt::layer().with_target(false).boxed(),
            fmt::layer()
                .with_target(false)
                .with_ansi(false)
                .with_writer(file_writer)
                .boxed(),
        ),
        LogFormat::Json => (
            fmt::layer().json().flatten_event(true).boxed(),
            fmt::layer()
                .json()
                .flatten_event(true)
                .with_writer(file_writer)
                .boxed(),
        ),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(stdout_layer)
        .with(file_layer)
        .try_init()
        .map_err(io::Error::other)?;
    Ok(guard)
}

/// The process's Prometheus recorder, installed on first use. One per process: every service
/// built in it (tests build many) reports into the same registry.
pub fn metrics() -> &'static metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("another metrics recorder is installed: /metrics will stay empty");
        }
        handle
    })
}
