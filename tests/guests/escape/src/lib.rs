//! Tries everything the sandbox must deny and reports, as JSON, what each attempt got.
//!
//! Each probe becomes `{"ok": true, "value": ...}` with what it read, or
//! `{"ok": false, "error": "..."}`. The guest always succeeds, so the test can inspect every
//! probe in one report instead of stopping at the first that fails.

use std::fmt::Display;
use std::io::Write;
use std::net::{TcpStream, ToSocketAddrs};

use wasm_runner_guest::serde_json::{Value, json};
use wasm_runner_guest::{Context, TaskError, export_task, json};

/// Longest file excerpt copied into the report: enough to recognise a leak.
const EXCERPT_BYTES: usize = 200;

fn run(_ctx: &Context, _payload: Vec<u8>) -> Result<Vec<u8>, TaskError> {
    let report = json!({
        "read_etc_passwd": probe(read_excerpt("/etc/passwd")),
        "list_current_dir": probe(list_dir(".")),
        "list_root_dir": probe(list_dir("/")),
        "env_vars": env_vars(),
        "env_home": probe(std::env::var("HOME")),
        "args": args(),
        "tcp_connect": probe(TcpStream::connect("127.0.0.1:6379").map(|s| peer_of(&s))),
        "resolve_host": probe(resolve("example.com:80")),
        "write_tmp_file": probe(write_file("/tmp/x")),
        "spawn_process": probe(spawn("/bin/sh")),
    });
    json::to_vec(&report)
}

fn probe<T: Into<Value>, E: Display>(result: Result<T, E>) -> Value {
    match result {
        Ok(value) => json!({ "ok": true, "value": value.into() }),
        Err(err) => json!({ "ok": false, "error": err.to_string() }),
    }
}

/// Starts a shell and reports its exit status: a sandbox that allowed it would let a task run
/// anything on the worker's machine.
fn spawn(program: &str) -> std::io::Result<String> {
    let status = std::process::Command::new(program)
        .arg("-c")
        .arg("true")
        .status()?;
    Ok(status.to_string())
}

fn read_excerpt(path: &str) -> std::io::Result<String> {
    let bytes = std::fs::read(path)?;
    let end = bytes.len().min(EXCERPT_BYTES);
    Ok(String::from_utf8_lossy(&bytes[..end]).into_owned())
}

fn list_dir(path: &str) -> std::io::Result<Vec<String>> {
    std::fs::read_dir(path)?
        .map(|entry| entry.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect()
}

fn write_file(path: &str) -> std::io::Result<String> {
    let mut file = std::fs::File::create(path)?;
    file.write_all(b"written from inside the sandbox\n")?;
    Ok(format!("wrote {path}"))
}

/// Names only: values could be secrets, and the test needs nothing but their presence.
fn env_vars() -> Value {
    let names: Vec<String> = std::env::vars_os()
        .map(|(name, _)| name.to_string_lossy().into_owned())
        .collect();
    json!({ "ok": true, "value": { "count": names.len(), "names": names } })
}

fn args() -> Value {
    let args: Vec<String> = std::env::args_os()
        .map(|arg| arg.to_string_lossy().into_owned())
        .collect();
    json!({ "ok": true, "value": { "count": args.len(), "args": args } })
}

fn peer_of(stream: &TcpStream) -> String {
    match stream.peer_addr() {
        Ok(addr) => format!("connected to {addr}"),
        Err(_) => "connected".to_owned(),
    }
}

fn resolve(host: &str) -> std::io::Result<Vec<String>> {
    Ok(host
        .to_socket_addrs()?
        .map(|addr| addr.to_string())
        .collect())
}

export_task!(run);
