//! Loading a task: checking that the bytes are a component that implements the task world,
//! compiling it, and linking it once so every attempt only instantiates.
//!
//! Each way a file can be wrong has its own [`LoadError`] variant with a message that says what
//! to do about it, because the person reading it just tried to upload or run that file.

use std::hash::{Hash as _, Hasher as _};
use std::path::Path;

use wasmtime::Engine;
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, Linker};

use crate::runtime::bindings::TaskPre;
use crate::runtime::state::JobState;

/// The world a task must implement, for messages.
pub const TASK_WORLD: &str = "wasm-runner:task/task@0.1.0";

const RUN_SIGNATURE: &str =
    "run: func(ctx: job-context, payload: list<u8>) -> result<list<u8>, task-error>";

/// Why a file cannot be run as a task.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    /// The file has no bytes.
    #[error(
        "the file is empty; expected a WebAssembly component built with \
         `cargo build --target wasm32-wasip2`"
    )]
    Empty,
    /// The file does not start with the WebAssembly magic bytes.
    #[error(
        "the file is not WebAssembly (it does not start with the `\\0asm` magic bytes); \
         expected a component built with `cargo build --target wasm32-wasip2`"
    )]
    NotWasm,
    /// The file is a core module, not a component.
    #[error(
        "the file is a core WebAssembly module, not a component; build the task for \
         `wasm32-wasip2`, which produces a component, or wrap the module with \
         `wasm-tools component new`"
    )]
    CoreModule,
    /// The component is malformed or failed to compile.
    #[error("the component is invalid and cannot be compiled: {0}")]
    Invalid(String),
    /// The component imports something the host does not provide.
    #[error(
        "the component imports {0}, which wasm-runner does not provide; a task may import \
         only WASI 0.2 interfaces and `wasm-runner:task/host-log@0.1.x`"
    )]
    UnknownImport(String),
    /// The component has no `run` export, or one of the wrong type.
    #[error("the component does not implement the `{TASK_WORLD}` world: {0}")]
    WrongWorld(String),
}

/// A compiled task, linked and ready to instantiate; cheap to share between attempts.
#[derive(Clone)]
pub struct TaskComponent {
    pub(crate) pre: TaskPre<JobState>,
}

impl std::fmt::Debug for TaskComponent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskComponent").finish_non_exhaustive()
    }
}

/// Checks, compiles and links `wasm`.
pub(crate) fn load(
    engine: &Engine,
    linker: &Linker<JobState>,
    wasm: &[u8],
) -> Result<TaskComponent, LoadError> {
    link(engine, linker, compile(engine, wasm)?)
}

/// [`load`], with the compiled code kept in `dir` under the digest and the engine's hash.
pub(crate) fn load_cached(
    engine: &Engine,
    linker: &Linker<JobState>,
    wasm: &[u8],
    digest: &str,
    dir: &Path,
) -> Result<TaskComponent, LoadError> {
    let path = dir.join(format!("{digest}-{:016x}.cwasm", engine_hash(engine)));
    if path.exists() {
        match deserialize(engine, &path) {
            Ok(component) => return link(engine, linker, component),
            Err(err) => tracing::warn!(
                path = %path.display(),
                error = %format!("{err:#}"),
                "unusable compile cache entry; recompiling"
            ),
        }
    }

    let component = compile(engine, wasm)?;
    let task = link(engine, linker, component.clone())?;
    if let Err(err) = store_artifact(&component, dir, &path) {
        tracing::warn!(
            path = %path.display(),
            error = %format!("{err:#}"),
            "cannot write the compile cache; continuing without it"
        );
    }
    Ok(task)
}

/// Loads compiled code from the cache.
///
/// This is the only `unsafe` in the host: wasmtime runs deserialized machine code as it is,
/// so a file must be one this engine wrote. The cache directory is created private to the
/// user (0700), names include a hash of the engine's settings and version, and wasmtime itself
/// checks the header's version and settings before loading. The file is read into memory
/// rather than mapped: a mapped file that someone truncates would crash the worker.
#[allow(
    unsafe_code,
    reason = "loading artifacts this engine compiled; see the doc comment"
)]
fn deserialize(engine: &Engine, path: &Path) -> anyhow::Result<Component> {
    let bytes = std::fs::read(path)?;
    // SAFETY: the bytes were written by `store_artifact` from `Component::serialize` with an
    // engine of the same settings (the file name carries their hash), in a directory only
    // this user can write to.
    Ok(unsafe { Component::deserialize(engine, &bytes) }?)
}

fn store_artifact(component: &Component, dir: &Path, path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;

    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let bytes = component.serialize()?;
    // Write to a temporary name and rename, so a reader never sees half a file.
    let temporary = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&temporary, bytes)?;
    std::fs::rename(&temporary, path)?;
    Ok(())
}

fn engine_hash(engine: &Engine) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    hasher.finish()
}

fn compile(engine: &Engine, wasm: &[u8]) -> Result<Component, LoadError> {
    check_header(wasm)?;
    let component =
        Component::new(engine, wasm).map_err(|err| LoadError::Invalid(format!("{err:#}")))?;
    Ok(component)
}

fn link(
    engine: &Engine,
    linker: &Linker<JobState>,
    component: Component,
) -> Result<TaskComponent, LoadError> {
    check_run_export(engine, &component)?;
    let instance_pre = linker
        .instantiate_pre(&component)
        .map_err(|err| LoadError::UnknownImport(describe_link_error(&err)))?;
    let pre = TaskPre::new(instance_pre).map_err(|err| {
        LoadError::WrongWorld(format!(
            "its `run` export has the wrong type ({err:#}); it must be `{RUN_SIGNATURE}`, \
             so rebuild the task against wit/task.wit"
        ))
    })?;
    Ok(TaskComponent { pre })
}

fn check_header(wasm: &[u8]) -> Result<(), LoadError> {
    if wasm.is_empty() {
        return Err(LoadError::Empty);
    }
    if wasm.len() < 8 || &wasm[..4] != b"\0asm" {
        return Err(LoadError::NotWasm);
    }
    // Bytes 4..8 are a version and a layer: layer 0 is a core module, layer 1 a component.
    match wasm[6..8] {
        [0, 0] => Err(LoadError::CoreModule),
        _ => Ok(()),
    }
}

fn check_run_export(engine: &Engine, component: &Component) -> Result<(), LoadError> {
    let exports: Vec<(String, ComponentItem)> = component
        .component_type()
        .exports(engine)
        .map(|(name, item)| (name.to_owned(), item.ty))
        .collect();
    if let Some((_, item)) = exports.iter().find(|(name, _)| name == "run") {
        if matches!(item, ComponentItem::ComponentFunc(_)) {
            return Ok(());
        }
        return Err(LoadError::WrongWorld(format!(
            "its `run` export is not a function; it must be `{RUN_SIGNATURE}`"
        )));
    }
    let names: Vec<&str> = exports.iter().map(|(name, _)| name.as_str()).collect();
    let found = if names.is_empty() {
        "it exports nothing".to_owned()
    } else {
        format!("it exports only `{}`", names.join("`, `"))
    };
    Err(LoadError::WrongWorld(format!(
        "it has no `run` export ({found}); a task must export `{RUN_SIGNATURE}`"
    )))
}

/// Pulls the import's name out of wasmtime's link error, which reads
/// "component imports instance `NAME`, but a matching implementation was not found in the
/// linker", so the message can lead with the name.
fn describe_link_error(err: &wasmtime::Error) -> String {
    let text = format!("{err:#}");
    let name = text
        .split('`')
        .nth(1)
        .map(|name| format!("`{name}`"))
        .unwrap_or_else(|| "something".to_owned());
    format!("{name} ({text})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_file_kinds_by_header() {
        assert_eq!(check_header(b""), Err(LoadError::Empty));
        assert_eq!(check_header(b"hello world"), Err(LoadError::NotWasm));
        assert_eq!(check_header(b"\0asm\x01\0\0\0"), Err(LoadError::CoreModule));
        assert_eq!(check_header(b"\0asm\x0d\0\x01\0"), Ok(()));
    }
}
