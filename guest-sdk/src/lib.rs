//! Write wasm-runner tasks in plain Rust.
//!
//! A task is a WebAssembly component that the runner calls once per attempt of a job, with the
//! job's [`Context`] and its payload bytes. The task answers with result bytes or a
//! [`TaskError`] that says whether the job is worth retrying. This crate is the only
//! dependency a task needs: it generates the bindings for the `wasm-runner:task` WIT world,
//! exports the task with one macro line, and re-exports [`serde`] and [`serde_json`] for JSON
//! payloads.
//!
//! # A minimal task
//!
//! ```
//! use wasm_runner_guest::serde::{Deserialize, Serialize};
//! use wasm_runner_guest::{Context, TaskError, export_json_task, log};
//!
//! #[derive(Deserialize)]
//! #[serde(crate = "wasm_runner_guest::serde")]
//! struct Image {
//!     width: u32,
//!     height: u32,
//! }
//!
//! #[derive(Serialize)]
//! #[serde(crate = "wasm_runner_guest::serde")]
//! struct Area {
//!     pixels: u64,
//! }
//!
//! fn area(ctx: &Context, image: Image) -> Result<Area, TaskError> {
//!     if image.width == 0 || image.height == 0 {
//!         return Err(TaskError::permanent("image is empty").code("empty-image"));
//!     }
//!     log::info_with("measuring image", &[("attempt", &ctx.attempt)]);
//!     Ok(Area { pixels: u64::from(image.width) * u64::from(image.height) })
//! }
//!
//! export_json_task!(area);
//! # fn main() {}
//! ```
//!
//! Build it as a `cdylib` for the `wasm32-wasip2` target; the `.wasm` file cargo writes is
//! already a component the runner can load. The SDK is not on crates.io, so depend on it by
//! path (crates inside this workspace use `wasm-runner-guest.workspace = true`):
//!
//! ```toml
//! [lib]
//! crate-type = ["cdylib"]
//!
//! [dependencies]
//! wasm-runner-guest = { path = "../wasm-runner/guest-sdk" }
//! ```
//!
//! ```text
//! cargo build --target wasm32-wasip2 --release
//! ```
//!
//! Inside this workspace, `--profile guest` builds a smaller component than `--release`.
//!
//! # What the crate provides
//!
//! - [`export_task!`] exports a `fn(&Context, Vec<u8>) -> Result<Vec<u8>, TaskError>`;
//!   [`export_json_task!`] exports a `fn(&Context, In) -> Result<Out, TaskError>` and handles
//!   the JSON on both sides.
//! - [`TaskError`] builds transient (retry later, optionally after a suggested delay) and
//!   permanent (never retry) failures, each with an optional machine-readable code.
//! - [`log`] writes records, with key/value fields, into the job's log.
//! - [`json`] decodes payloads and encodes results by hand, with the same error codes the
//!   JSON export macro uses.
//!
//! # Deriving serde traits without depending on serde
//!
//! `serde`'s derive macros name the `serde` crate in the code they generate. A task that uses
//! the re-export instead of its own `serde` dependency adds
//! `#[serde(crate = "wasm_runner_guest::serde")]` to each derived type, as above. Depending on
//! `serde` (with the `derive` feature) directly works as well.
//!
//! # Native builds
//!
//! The crate also compiles for the host platform so task functions can be unit-tested with a
//! plain `cargo test`: call the function with a hand-built [`Context`]. There is no host there,
//! so [`log`] writes to stderr instead.

#![warn(missing_docs)]

#[allow(
    unsafe_code,
    reason = "wit-bindgen's generated ABI glue reads and writes raw guest memory"
)]
#[doc(hidden)]
pub mod bindings;
mod context;
mod error;
mod export;
pub mod json;
pub mod log;

pub use context::Context;
pub use error::TaskError;
pub use serde;
pub use serde_json;

/// Items the export macros expand to. Not public API: may change in any release.
#[doc(hidden)]
pub mod __private {
    pub use crate::export::{run_bytes, run_json};
}
