//! # lcm — the trial Lifecycle Manager
//!
//! A REST service that schedules 5G drone trials and runs **one engine per trial**.
//!
//! ## Architecture
//!
//! - [`api`] is the REST surface: one router per area, extractors that validate at the edge
//!   ([`domain::TrialId::parse`], [`domain::StartTime::parse`], API key, callback tokens), and a
//!   single error type answered as `{"detail": …}`.
//! - [`scheduler`] owns the scheduled jobs (one timer task each) and the registry of engines
//!   (one per trial id). At a job's start time it starts the trial's engine.
//! - [`engine`] is the heart. An engine is a cheap handle to two tokio tasks: the
//!   **executor**, which walks the fixed sequence of [`engine::sequence`] and pauses at
//!   waiting points for callbacks or operator signals, and the **watchdog**, which keeps the
//!   executor's latest backup (a checkpoint after every completed step and at every waiting
//!   point), runs the failure procedure when the executor fails or dies, and restores it from
//!   the backup on request. The
//!   API talks to an engine only through channels: signals go to the executor (which answers
//!   at once, even while a request is in flight), restores to the watchdog, and the state is
//!   read from a `watch` channel. No handler waits on a running step.
//! - [`services`] is the one outbound HTTP client: per-service auth (API key, Basic, OAuth2
//!   client credentials), TLS, timeouts and connection retries. Every answer is recorded for
//!   the trial, with its callback token redacted.
//! - [`store`] makes the state durable (scheduled jobs, engine checkpoints, revocations, the
//!   automatic-scheduling switch) in an embedded SQLite file, written by one thread; a
//!   checkpoint is committed before the executor sends its next request. At start-up,
//!   [`scheduler::Scheduler::recover`] brings jobs and engines back.
//! - [`tokens`] mints, verifies and revokes the per-trial callback tokens (HS256 JWT).
//! - [`access`] holds the API keys and their roles (reloaded on SIGHUP) and limits failed
//!   authentications per client address; each handler declares the role it needs by its
//!   extractor ([`api::extract`]).
//! - [`config`] loads layered settings; [`telemetry`] sets logging and metrics up; [`startup`]
//!   wires it all; [`server`] serves it over HTTP/1 with the connection limits (timeouts for
//!   slow or idle clients, a cap on open connections, a bounded drain at shutdown);
//!   [`cli`] is the command line.
//! - [`console`] is the operator console at `/ui/`: server-rendered pages that show the trials
//!   live and send an operator's actions through the API's own handlers.
//! - [`sim`] holds simulated trial components (repository, enforcement, KPI monitoring) as
//!   real HTTP servers with fault injection, for the tests, the demo and the benchmark.
//! - [`demo`] (`lcm demo`) runs one trial against them on 127.0.0.1 through the REST API and
//!   prints each step as it happens.
//! - [`bench`] (`lcm bench`) drives many trials through the REST API and reports throughput,
//!   per-step overhead, CPU, memory and threads of the LCM alone.
//!
//! Shared maps (jobs, engines, heartbeats, revoked tokens) are small, behind plain mutexes
//! never held across an `.await`; everything long-lived is a task that owns its state.

pub mod access;
pub mod api;
pub mod bench;
pub mod cli;
pub mod config;
pub mod console;
pub mod demo;
pub mod domain;
pub mod engine;
pub mod heartbeat;
pub mod scheduler;
pub mod server;
pub mod services;
pub mod sim;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod tokens;
