//! Integration tests: the real service over real HTTP on 127.0.0.1, with the trial components
//! simulated by real HTTP servers in the test process. One test binary, so the crate links once.

mod audit;
mod auth;
mod callbacks;
#[path = "../common/mod.rs"]
mod common;
mod config;
mod console;
mod control;
mod crash;
mod demo;
mod diagrams;
mod edges;
mod failures;
mod helpers;
mod limits;
mod load;
mod observe;
mod openapi;
mod races;
mod readme;
mod records;
mod resilience;
mod roles;
mod routes;
mod scheduling;
mod tokens;
mod trial_flow;
