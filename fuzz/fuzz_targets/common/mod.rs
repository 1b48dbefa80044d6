//! Helpers shared by the fuzz targets.
#![allow(dead_code)]

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use envbox::http::HttpError;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// An in-memory peer: reads hand out `input` at most `chunk` bytes at a
/// time; at its end, either EOF or (with `stall`) a peer that never sends
/// again (reads stay pending, so only a deadline can end them). Writes are
/// collected in `written`.
pub struct Mem<'a> {
    input: &'a [u8],
    pos: usize,
    chunk: usize,
    stall: bool,
    pub written: Vec<u8>,
}

impl<'a> Mem<'a> {
    pub fn new(input: &'a [u8], chunk: usize, stall: bool) -> Self {
        Mem { input, pos: 0, chunk: chunk.max(1), stall, written: Vec::new() }
    }

    pub fn remaining(&self) -> usize {
        self.input.len() - self.pos
    }
}

impl AsyncRead for Mem<'_> {
    fn poll_read(mut self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let left = this.input.len() - this.pos;
        if left == 0 {
            // Pending without a waker: nothing will ever wake this read, as
            // with a silent peer; the paused clock lets the deadline fire.
            return if this.stall { Poll::Pending } else { Poll::Ready(Ok(())) };
        }
        let n = left.min(this.chunk).min(buf.remaining());
        buf.put_slice(&this.input[this.pos..this.pos + n]);
        this.pos += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Mem<'_> {
    fn poll_write(mut self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.written.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A current-thread runtime whose clock is paused and auto-advances when
/// the runtime is idle: a 30 s deadline costs nothing.
pub fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().expect("runtime")
}

/// An `HttpError` reduced to something comparable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fail {
    Closed,
    TimedOut,
    Io(io::ErrorKind),
    Bad(u16),
}

impl From<&HttpError> for Fail {
    fn from(e: &HttpError) -> Self {
        match e {
            HttpError::Closed => Fail::Closed,
            HttpError::TimedOut => Fail::TimedOut,
            HttpError::Io(e) => Fail::Io(e.kind()),
            HttpError::Bad { status, .. } => Fail::Bad(*status),
        }
    }
}

/// Whether checks for bugs already reported are skipped
/// (`ENVBOX_FUZZ_SKIP_KNOWN=1`), so a run can look for new ones before the
/// fix lands. See README.md, "Findings".
pub fn skip_known() -> bool {
    static SKIP: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SKIP.get_or_init(|| std::env::var_os("ENVBOX_FUZZ_SKIP_KNOWN").is_some_and(|v| !v.is_empty() && v != "0"))
}

/// The value of header `name` (lower-case), if present.
pub fn header<'h>(headers: &'h [(String, Vec<u8>)], name: &str) -> Option<&'h [u8]> {
    headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_slice())
}
