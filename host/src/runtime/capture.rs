//! Bounded capture of a guest's stdout and stderr.
//!
//! wasmtime's own memory pipe reports "closed" once it is full, and a Rust guest panics on the
//! failed write and dies; a chatty task would then fail because of its logging. This stream
//! instead accepts every write, keeps the first and the last bytes up to a bound, and counts
//! what it dropped in between.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// How many bytes one guest write may hand over at once. The WASI streams use the same order of
/// magnitude; a bigger permit would let a guest make the host allocate more per call.
const WRITE_PERMIT: usize = 64 << 10;

/// Keeps the first `head_cap` and the last `tail_cap` bytes written, and counts the rest.
#[derive(Debug)]
pub(crate) struct HeadTail {
    head: Vec<u8>,
    tail: VecDeque<u8>,
    head_cap: usize,
    tail_cap: usize,
    dropped: u64,
}

impl HeadTail {
    pub(crate) fn new(head_cap: usize, tail_cap: usize) -> Self {
        HeadTail {
            head: Vec::new(),
            tail: VecDeque::new(),
            head_cap,
            tail_cap,
            dropped: 0,
        }
    }

    pub(crate) fn push(&mut self, mut bytes: &[u8]) {
        let room = self.head_cap - self.head.len();
        if room > 0 {
            let take = room.min(bytes.len());
            self.head.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
        }
        if bytes.len() > self.tail_cap {
            let skip = bytes.len() - self.tail_cap;
            self.dropped += (skip + self.tail.len()) as u64;
            self.tail.clear();
            bytes = &bytes[skip..];
        }
        let overflow = (self.tail.len() + bytes.len()).saturating_sub(self.tail_cap);
        if overflow > 0 {
            self.tail.drain(..overflow);
            self.dropped += overflow as u64;
        }
        self.tail.extend(bytes);
    }

    /// The kept text, with a marker where bytes were dropped, and how many were dropped.
    pub(crate) fn render(&self) -> (String, u64) {
        let mut bytes = self.head.clone();
        if self.dropped > 0 {
            bytes.extend_from_slice(
                format!("\n[... {} bytes dropped ...]\n", self.dropped).as_bytes(),
            );
        }
        bytes.extend(self.tail.iter());
        (String::from_utf8_lossy(&bytes).into_owned(), self.dropped)
    }
}

/// A guest output stream (stdout or stderr) that never refuses a write.
#[derive(Debug, Clone)]
pub(crate) struct CaptureStream {
    buffer: Arc<Mutex<HeadTail>>,
    name: &'static str,
}

impl CaptureStream {
    pub(crate) fn new(name: &'static str, head_cap: usize, tail_cap: usize) -> Self {
        CaptureStream {
            buffer: Arc::new(Mutex::new(HeadTail::new(head_cap, tail_cap))),
            name,
        }
    }

    pub(crate) fn render(&self) -> (String, u64) {
        self.lock().render()
    }

    fn lock(&self) -> MutexGuard<'_, HeadTail> {
        // A poisoned lock only means another write panicked half-way; the buffer is still a
        // valid byte buffer, so keep using it.
        self.buffer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn append(&self, bytes: &[u8]) {
        tracing::debug!(
            target: "wasm_runner::guest",
            stream = self.name,
            text = %String::from_utf8_lossy(bytes).trim_end(),
        );
        self.lock().push(bytes);
    }
}

impl IsTerminal for CaptureStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CaptureStream {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CaptureStream {
    async fn ready(&mut self) {}
}

impl OutputStream for CaptureStream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.append(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_PERMIT)
    }
}

impl AsyncWrite for CaptureStream {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.append(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_everything_under_the_bound() {
        let mut buffer = HeadTail::new(4, 4);
        buffer.push(b"abc");
        buffer.push(b"def");
        assert_eq!(buffer.render(), ("abcdef".to_owned(), 0));
    }

    #[test]
    fn keeps_head_and_tail_and_counts_the_middle() {
        let mut buffer = HeadTail::new(3, 3);
        buffer.push(b"0123456789");
        buffer.push(b"ab");
        let (text, dropped) = buffer.render();
        assert_eq!(dropped, 6);
        assert_eq!(text, "012\n[... 6 bytes dropped ...]\n9ab");
    }

    #[test]
    fn many_small_writes_keep_the_latest_tail() {
        let mut buffer = HeadTail::new(2, 2);
        for byte in b"abcdefgh" {
            buffer.push(&[*byte]);
        }
        let (text, dropped) = buffer.render();
        assert_eq!(dropped, 4);
        assert!(text.starts_with("ab") && text.ends_with("gh"), "{text}");
    }
}
