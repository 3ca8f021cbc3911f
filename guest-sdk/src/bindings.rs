//! Rust bindings for the `wasm-runner:task` world, generated from `wit/` at build time.
//!
//! Nothing here is public API: task authors use `Context`, `TaskError` and the export macros,
//! which translate to and from these types. The module is `pub` (and hidden) only because the
//! export macros expand in the task's crate and must name it through `$crate`.

// The canonical ABI flattens `run`'s record and list arguments into ten core parameters.
#![allow(
    clippy::too_many_arguments,
    reason = "generated ABI glue, not hand-written code"
)]

wit_bindgen::generate!({
    // Read the contract by path so the SDK can never drift from the host's copy.
    path: "../wit",
    world: "task",
    // The export macro is invoked from task crates, not from this one, so it must be
    // `#[macro_export]`ed and must find the generated types through this crate's path.
    pub_export_macro: true,
    export_macro_name: "export",
    default_bindings_module: "wasm_runner_guest::bindings",
});
