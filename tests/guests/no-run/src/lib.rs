//! A valid component that exports `hello` and no `run`, for testing that the runner rejects a
//! component that does not implement the task contract.

#[allow(
    unsafe_code,
    reason = "wit-bindgen's generated ABI glue reads and writes raw guest memory"
)]
mod bindings {
    wit_bindgen::generate!({ path: "wit", world: "task" });

    // Exported from inside this module so the `unsafe` export shims it expands to are
    // covered by the `allow` above.
    use super::NoRun;
    export!(NoRun);
}

struct NoRun;

impl bindings::Guest for NoRun {
    fn hello() -> String {
        "this component is not a wasm-runner task".to_owned()
    }
}
