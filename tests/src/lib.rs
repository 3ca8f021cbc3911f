//! Shared helpers for wasm-runner's end-to-end tests.
//!
//! - [`guest`]: the path of a guest component built by this crate's `build.rs`, or a panic that
//!   says why it is missing.
//! - [`guest_bytes`]: the same, read into memory.
//! - [`all_guests`]: every guest package that was built, for the test that checks each is used.
//! - [`TestRedis`]: a private `redis-server` on a free loopback port, killed on drop.
//! - [`TestRedisCluster`]: a private three-master Redis Cluster on loopback.
//! - [`wat`]: task components written in the text format, for abuse Rust guests cannot express.
//! - [`InProcessWorker`]: the `serve` loop on a task of the test's runtime.

use std::path::PathBuf;

pub mod http;
pub mod ledger;
pub mod openapi;
pub mod proxy;
mod redis;
pub mod wat;
mod worker;

pub use redis::{TestRedis, TestRedisCluster};
pub use worker::InProcessWorker;

/// Where `build.rs` put the guest components.
const GUEST_DIR: &str = env!("WASM_RUNNER_GUEST_DIR");
/// Why the guests could not be built; empty when they were.
const GUEST_ERROR: &str = env!("WASM_RUNNER_GUEST_ERROR");
/// The guest packages `build.rs` built, comma-separated.
const GUESTS: &str = env!("WASM_RUNNER_GUESTS");

/// The path of the component built from package `package` (e.g. `example-hello`).
///
/// # Panics
///
/// Panics with the build error if the guests could not be built, or if no such guest exists.
pub fn guest(package: &str) -> PathBuf {
    assert!(
        GUEST_ERROR.is_empty(),
        "guest components are unavailable: {GUEST_ERROR}"
    );
    let path = PathBuf::from(GUEST_DIR).join(format!("{}.wasm", package.replace('-', "_")));
    assert!(
        path.exists(),
        "no guest component `{}`; known guests: {GUESTS}",
        path.display()
    );
    path
}

/// The bytes of the component built from package `package`.
///
/// # Panics
///
/// As [`guest`], or if the file cannot be read.
pub fn guest_bytes(package: &str) -> Vec<u8> {
    let path = guest(package);
    std::fs::read(&path).unwrap_or_else(|err| panic!("cannot read `{}`: {err}", path.display()))
}

/// Every guest package that `build.rs` found.
pub fn all_guests() -> Vec<&'static str> {
    GUESTS.split(',').filter(|name| !name.is_empty()).collect()
}
