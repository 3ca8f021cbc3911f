//! A component whose `run` export has the wrong signature, `func(payload: string) -> string`,
//! for testing that the runner rejects it as an unusable task instead of calling it.
//!
//! It uses wit-bindgen directly with its own WIT, because the SDK can only produce the real
//! signature.

#[allow(
    unsafe_code,
    reason = "wit-bindgen's generated ABI glue reads and writes raw guest memory"
)]
mod bindings {
    wit_bindgen::generate!({ path: "wit", world: "task" });

    // Exported from inside this module so the `unsafe` export shims it expands to are
    // covered by the `allow` above.
    use super::WrongSignature;
    export!(WrongSignature);
}

struct WrongSignature;

impl bindings::Guest for WrongSignature {
    fn run(payload: String) -> String {
        payload
    }
}
