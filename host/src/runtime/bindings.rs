//! The generated bindings for the `wasm-runner:task` world in `wit/`; nothing else.
//!
//! `run` is called asynchronously so a running guest can yield to the tokio runtime at every
//! epoch tick. The `host-log` import stays synchronous: it only appends to a buffer, and a
//! synchronous host call avoids a fiber switch per log record.

wasmtime::component::bindgen!({
    world: "task",
    path: "../wit",
    exports: { default: async },
});
