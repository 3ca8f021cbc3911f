//! Arbitrary bytes into `Executor::load`, the check every uploaded or fetched component goes
//! through before a worker runs it. The bytes come from tenants, so any input must end in a
//! `LoadError`, never a panic or a crash inside wasmtime's parser, validator or compiler.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use wasm_runner::runtime::{EngineOptions, Executor, LoadError};

/// One executor for the whole run, as in a worker: building an engine per input would spend
/// the time on engine setup instead of on the loader. One slot keeps the instance pool small.
static EXECUTOR: OnceLock<Executor> = OnceLock::new();

fn executor() -> &'static Executor {
    EXECUTOR.get_or_init(|| {
        let options = EngineOptions {
            max_concurrent: 1,
            ..Default::default()
        };
        Executor::new(options).expect("an engine with default settings must build on this host")
    })
}

fuzz_target!(|wasm: &[u8]| {
    let result = executor().load(wasm);

    // The error's message is shown to the uploader, so rendering it must not panic either.
    if let Err(err) = &result {
        let _ = err.to_string();
    }

    // The cheap header checks run first and must classify exactly as documented; a mistake
    // there would send a core module or a text file on to wasmtime with a misleading message.
    let header_error = match wasm {
        [] => Some(LoadError::Empty),
        [0, b'a', b's', b'm', _, _, _, _, ..] if wasm[6..8] == [0, 0] => {
            Some(LoadError::CoreModule)
        }
        [0, b'a', b's', b'm', _, _, _, _, ..] => None,
        _ => Some(LoadError::NotWasm),
    };
    if let Some(expected) = header_error {
        assert_eq!(
            result.err(),
            Some(expected),
            "header of {} bytes",
            wasm.len()
        );
    }
});
