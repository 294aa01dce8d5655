//! # lcm — the trial Lifecycle Manager
//!
//! A REST service that schedules 5G drone trials and runs **one engine per trial**.
//!
//! ## Architecture
//!
//! - [`api`] is the REST surface: one router per area, extractors that validate at the edge
//!   ([`domain::TrialId::parse`], [`domain::StartTime::parse`], the caller's role, callback
//!   tokens), a single error type answered as `{"detail": …}`, a view of a trial that reads
//!   the same from memory or the store ([`api::view`]), and the audit layer ([`api::audit`]).
//!   Each request is handled to its end in a task of its own, so a caller that goes away never
//!   leaves a change half made.
//! - [`scheduler`] owns the scheduled jobs (one timer task each, armed once the job is saved)
//!   and the registry of engines in memory (one per trial id). At a job's start time it starts
//!   the trial's engine.
//! - [`engine`] is the heart. An engine is a cheap handle to two tokio tasks: the
//!   **executor**, which walks the fixed sequence of [`engine::sequence`] (or, after an abort,
//!   its clean-up path), pauses at waiting points for callbacks or operator signals and holds
//!   before a step while the operator has paused the trial; and the **watchdog**, which keeps
//!   the executor's latest checkpoint (after every completed step and at every waiting point),
//!   runs the failure procedure when the executor fails or dies, and starts every executor:
//!   the first, a restored one, one that skips a failed step, one that cleans up a failed
//!   trial. Stopping an engine (a delete, the service shutting down) goes through the
//!   watchdog and never reports a failure. Every change of an engine's state goes through
//!   [`engine::EngineShared::move_to`]; its events and recorded responses through its
//!   [`engine::journal::Journal`]. The API talks to an engine only through channels and reads
//!   its state from a `watch` channel; no handler waits on a running step.
//! - [`services`] is the one outbound HTTP client: per-service auth (API key, Basic, OAuth2
//!   client credentials), TLS, timeouts and each service's retry policy
//!   ([`services::retry`]). Every attempt is recorded for the trial, its secrets redacted.
//! - [`store`] keeps the records (SPEC §12) in an embedded SQLite file with a schema of its
//!   own ([`store::codec`]): a small checkpoint per trial, its events and responses appended as
//!   rows, jobs, revocations, the audit log. One thread writes; a checkpoint is committed
//!   before the executor sends its next request. At start-up only live trials are read, and
//!   [`scheduler::Scheduler::recover`] brings them back; ended ones leave memory after
//!   `engine.keep_finished_secs` and the store after `store.retention_days`.
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
mod deadline;
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
