//! Builds every guest (`examples/*` and `tests/guests/*`) for `wasm32-wasip2` and tells the
//! tests where the components are.
//!
//! The guests are built by a nested `cargo` with its own target directory, because the outer
//! build holds the lock on the main one. If the build fails (most often: the `wasm32-wasip2`
//! target is not installed), the error is passed to the tests instead of failing this build,
//! so the tests that need a guest fail with the reason and the others still run.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir
        .parent()
        .expect("tests/ sits inside the workspace")
        .to_owned();
    for dir in ["examples", "tests/guests", "guest-sdk", "wit"] {
        println!("cargo::rerun-if-changed={}", root.join(dir).display());
    }

    let target_dir = root.join("target").join("guests");
    let packages: Vec<String> = ["examples", "tests/guests"]
        .iter()
        .flat_map(|dir| package_names(&root.join(dir)))
        .collect();
    let out_dir = target_dir.join("wasm32-wasip2").join("guest");
    println!(
        "cargo::rustc-env=WASM_RUNNER_GUEST_DIR={}",
        out_dir.display()
    );
    println!("cargo::rustc-env=WASM_RUNNER_GUESTS={}", packages.join(","));

    let error = build(&root, &target_dir, &packages)
        .err()
        .unwrap_or_default();
    if !error.is_empty() {
        println!("cargo::warning=guest build failed; tests that need guests will fail");
    }
    // rustc-env values are single lines.
    println!(
        "cargo::rustc-env=WASM_RUNNER_GUEST_ERROR={}",
        error.replace('\n', " | ")
    );
}

fn build(root: &Path, target_dir: &Path, packages: &[String]) -> Result<(), String> {
    if packages.is_empty() {
        return Err("no guest packages found under examples/ or tests/guests/".to_owned());
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut command = Command::new(cargo);
    command
        .current_dir(root)
        .args([
            "build",
            "--target",
            "wasm32-wasip2",
            "--profile",
            "guest",
            "--target-dir",
        ])
        .arg(target_dir);
    for package in packages {
        command.args(["-p", package]);
    }
    // Flags meant for the outer (native) build must not leak into the guest build.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
    ] {
        command.env_remove(var);
    }
    let output = command
        .output()
        .map_err(|err| format!("failed to start cargo: {err}"))?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let tail: Vec<&str> = stderr.lines().rev().take(15).collect();
    let hint = if stderr.contains("wasm32-wasip2") && stderr.contains("target may not be installed")
    {
        "the wasm32-wasip2 target is missing: run `rustup target add wasm32-wasip2`; "
    } else {
        ""
    };
    Err(format!(
        "{hint}building the guests failed: {}",
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    ))
}

/// The package names of the crates directly under `dir`, read from their manifests.
fn package_names(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|entry| {
            let manifest = std::fs::read_to_string(entry.ok()?.path().join("Cargo.toml")).ok()?;
            manifest.lines().find_map(|line| {
                let value = line.trim().strip_prefix("name")?.trim().strip_prefix('=')?;
                Some(value.trim().trim_matches('"').to_owned())
            })
        })
        .collect();
    names.sort();
    names
}
