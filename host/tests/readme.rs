//! The README's multi-tenant walkthrough, run as written: the shell block under "Many tenants"
//! with only its two ports (Redis 6400, API 8080) and the guest's path swapped for ones this
//! test owns, so it never touches a port it did not pick.

use std::process::Command;

use anyhow::{Context as _, ensure};

const README: &str = include_str!("../../README.md");
const BIN: &str = env!("CARGO_BIN_EXE_wasm-runner");

/// The first `sh` block after the `## Many tenants` heading.
fn walkthrough() -> anyhow::Result<String> {
    let section = README
        .split("\n## Many tenants")
        .nth(1)
        .context("the README has no `## Many tenants` section")?;
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .context("the walkthrough has no sh block")?;
    Ok(block.to_owned())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

#[test]
fn the_readme_walkthrough_works_as_written() -> anyhow::Result<()> {
    let script = walkthrough()?;
    ensure!(
        script.contains("6400") && script.contains("8080"),
        "ports changed: {script}"
    );
    let dir = tempfile::tempdir()?;
    let bin_dir = std::path::Path::new(BIN).parent().context("binary dir")?;
    let hello = wasm_runner_tests::guest("example-hello");
    let redis_port = free_port()?;
    let script = script
        .replace("6400", &redis_port.to_string())
        .replace("8080", &free_port()?.to_string())
        .replace("$PWD/target/debug", &bin_dir.display().to_string())
        .replace("$PWD/target", &dir.path().display().to_string())
        .replace(
            "target/walkthrough",
            &format!("{}/walkthrough", dir.path().display()),
        )
        .replace(
            "target/wasm32-wasip2/guest/example_hello.wasm",
            &hello.display().to_string(),
        );

    let output = Command::new("bash")
        .arg("-c")
        // Whatever happens, the worker and the Redis the script started do not outlive it.
        // The trap runs under `set -e`, so a job that exited between `jobs -p` and `kill`
        // must not fail the script.
        .arg(format!(
            "trap 'kill $(jobs -p) 2>/dev/null || true; redis-cli -p {redis_port} shutdown \
             nosave >/dev/null 2>&1 || true' EXIT\nset -e\n{script}"
        ))
        .current_dir(dir.path())
        .env_remove("WASM_RUNNER_TENANT")
        .output()
        .context("failed to run bash")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        output.status.success(),
        "the walkthrough failed ({}):\n{stdout}\n{stderr}",
        output.status
    );

    // What the README promises the reader will see.
    for expected in [
        r#""name":"hello","version":1"#,
        r#""state":"succeeded""#,
        r#"Hello, Ada!"#,
        r#""status":404"#,
        r#"over this tenant's ceiling of 128.0 MiB"#,
        r#""status":401"#,
    ] {
        ensure!(
            stdout.contains(expected),
            "missing `{expected}` in:\n{stdout}\n{stderr}"
        );
    }
    Ok(())
}
