//! wasm-runner runs jobs as sandboxed WebAssembly components.
//!
//! Layout, in the order data flows through it:
//!
//! - [`commands`]: the `wasm-runner` subcommands (clap structs and their `execute`).
//! - [`config`]: human-readable units and validated limits; every flag mistake surfaces here.
//! - [`job`]: job data shared by every layer: the context a task sees and the log it leaves.
//! - [`runtime`]: the sandbox: loads components and runs one attempt under limits.
//! - [`outcome`]: how an attempt ended, and what each ending means for retries.
//! - [`scheduler`]: retry timing: what happens to a job after an attempt; pure, no I/O.

pub mod api;
pub mod commands;
pub mod config;
pub mod job;
pub mod outcome;
pub mod queue;
pub mod runtime;
pub mod scheduler;
pub mod worker;
