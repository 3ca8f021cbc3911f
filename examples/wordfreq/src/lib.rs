//! Counts word frequencies in a text: `{"text": "...", "top": 10}` in, the `top` most frequent
//! words with their counts, plus total and distinct word counts, out. See `count` for what a
//! word is.

mod count;

use wasm_runner_guest::serde::{Deserialize, Serialize};
use wasm_runner_guest::{Context, TaskError, export_json_task, json, log};

use crate::count::count_words;

const DEFAULT_TOP: usize = 10;

/// The largest `top` accepted; the output for a bigger one would mostly be noise.
const MAX_TOP: usize = 1000;

#[derive(Debug, Deserialize)]
#[serde(crate = "wasm_runner_guest::serde")]
struct Input {
    text: String,
    #[serde(default = "default_top")]
    top: usize,
}

fn default_top() -> usize {
    DEFAULT_TOP
}

#[derive(Debug, Serialize)]
#[serde(crate = "wasm_runner_guest::serde")]
struct Output {
    total_words: u64,
    unique_words: u64,
    top: Vec<WordCount>,
}

#[derive(Debug, Serialize)]
#[serde(crate = "wasm_runner_guest::serde")]
struct WordCount {
    word: String,
    count: u64,
}

fn run(_ctx: &Context, input: Input) -> Result<Output, TaskError> {
    if input.top > MAX_TOP {
        let message = format!("`top` must be at most {MAX_TOP}, got {}", input.top);
        return Err(TaskError::permanent(message).code(json::INVALID_PAYLOAD));
    }

    let freq = count_words(&input.text, input.top);
    log::info_with(
        "counted words",
        &[
            ("total_words", &freq.total_words),
            ("unique_words", &freq.unique_words),
        ],
    );
    Ok(Output {
        total_words: freq.total_words,
        unique_words: freq.unique_words,
        top: freq
            .top
            .into_iter()
            .map(|(word, count)| WordCount { word, count })
            .collect(),
    })
}

export_json_task!(run);
