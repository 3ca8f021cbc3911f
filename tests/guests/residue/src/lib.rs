//! Looks for what an earlier task left in memory. The runner reuses pooled memory between
//! attempts, and must reset it so that no task can read another's data.
//!
//! The task grows its linear memory by `GROW_PAGES` and counts the bytes of the new pages that
//! are not zero. WebAssembly defines grown memory as zeroed, so a reset slot gives 0. With
//! `{"write": true}` it then fills those pages with a marker and counts again, which shows the
//! count sees what is there; the next attempt in the same slot must still count 0.

use wasm_runner_guest::serde::{Deserialize, Serialize};
use wasm_runner_guest::{Context, TaskError, export_json_task};

/// 16 WebAssembly pages: 1 MiB, past the initial memory of a small Rust task.
const GROW_PAGES: usize = 16;
const PAGE_BYTES: usize = 64 << 10;
const MARKER: u8 = 0xA5;

#[derive(Debug, Deserialize)]
#[serde(crate = "wasm_runner_guest::serde")]
struct Input {
    #[serde(default)]
    write: bool,
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(crate = "wasm_runner_guest::serde")]
struct Output {
    /// Non-zero bytes in the grown pages before this attempt wrote anything.
    found: usize,
    /// Non-zero bytes after writing the marker (0 when not asked to write).
    after_write: usize,
}

fn run(_ctx: &Context, input: Input) -> Result<Output, TaskError> {
    let fresh = grow().ok_or_else(|| TaskError::permanent("memory.grow failed"))?;
    let found = count_nonzero(fresh);
    let after_write = if input.write {
        fresh.fill(MARKER);
        count_nonzero(fresh)
    } else {
        0
    };
    Ok(Output { found, after_write })
}

fn count_nonzero(bytes: &[u8]) -> usize {
    bytes.iter().filter(|byte| **byte != 0).count()
}

/// The pages `memory.grow` just added, or `None` if it refused.
#[cfg(target_arch = "wasm32")]
fn grow() -> Option<&'static mut [u8]> {
    let previous = core::arch::wasm32::memory_grow(0, GROW_PAGES);
    if previous == usize::MAX {
        return None;
    }
    let start = previous * PAGE_BYTES;
    #[allow(
        unsafe_code,
        reason = "the pages were just added by memory.grow, are zeroed by definition, belong to \
                  no allocation (the allocator grows memory past them), and are used only here"
    )]
    // SAFETY: see the `allow` reason above; the range lies inside the grown memory.
    let pages =
        unsafe { std::slice::from_raw_parts_mut(start as *mut u8, GROW_PAGES * PAGE_BYTES) };
    Some(pages)
}

/// Natively there is no linear memory to grow; fresh zeroed bytes stand in for it, so the unit
/// tests cover the counting.
#[cfg(not(target_arch = "wasm32"))]
fn grow() -> Option<&'static mut [u8]> {
    Some(vec![0; GROW_PAGES * PAGE_BYTES].leak())
}

export_json_task!(run);

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Context {
        Context {
            job_id: "job-1".into(),
            attempt: 1,
            max_attempts: 1,
            task_name: "residue".into(),
            tenant: "default".into(),
        }
    }

    #[test]
    fn fresh_pages_count_zero() {
        let out = run(&ctx(), Input { write: false }).unwrap();
        assert_eq!(
            out,
            Output {
                found: 0,
                after_write: 0
            }
        );
    }

    #[test]
    fn writing_fills_every_byte() {
        let out = run(&ctx(), Input { write: true }).unwrap();
        assert_eq!(out.after_write, GROW_PAGES * PAGE_BYTES);
    }
}
