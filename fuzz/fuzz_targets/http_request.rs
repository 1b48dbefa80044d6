//! `envbox::http::Conn::read_request` on an arbitrary byte stream.
//!
//! Input: two config bytes (body limit, read size, whether the peer stalls
//! at the end instead of closing) and the bytes the client sends. Requests
//! are read until the first error.
//!
//! Invariants:
//! - no panic; the loop ends (EOF or a deadline ends every read; the clock
//!   is paused, so the 300 s/30 s deadlines cost nothing);
//! - every request has `body.len() <= max_body`, a non-empty method, a path
//!   that is its target up to `?`, lower-case header names, and a body that
//!   its framing headers announce (Content-Length n: n bytes; none: empty);
//! - `Connection: close` means `keep_alive == false`, `keep-alive` true;
//! - the server only ever writes `100 Continue` interim answers;
//! - the result does not depend on how the stream is split into reads (for
//!   inputs under 8000 bytes; the head and chunk-line limits are checked on
//!   the buffer, so larger ones may legitimately differ);
//! - a peer that stalls instead of closing gets the same requests, then
//!   the same error or `TimedOut` (never a hang).
#![no_main]

mod common;

use std::time::Duration;

use common::{header, paused_runtime, Fail, Mem};
use envbox::http::{Conn, Limits};
use libfuzzer_sys::fuzz_target;

type Req = (String, String, String, Vec<(String, Vec<u8>)>, Vec<u8>, bool);

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

thread_local! {
    static RT: tokio::runtime::Runtime = paused_runtime();
}

fn run(input: &[u8], max_body: u64, chunk: usize, stall: bool) -> (Vec<Req>, Fail, Vec<u8>) {
    RT.with(|rt| {
        rt.block_on(async {
            let limits = Limits { max_body, idle: Duration::from_secs(300), read: Duration::from_secs(30) };
            let mut conn = Conn::new(Mem::new(input, chunk, stall), limits);
            let mut oks = Vec::new();
            loop {
                match conn.read_request().await {
                    Ok(r) => {
                        oks.push((r.method, r.path, r.target, r.headers, r.body, r.keep_alive));
                        assert!(oks.len() <= input.len() / 4 + 1, "more requests than the input can hold");
                    }
                    Err(e) => return (oks, Fail::from(&e), std::mem::take(&mut conn.stream.written)),
                }
            }
        })
    })
}

fn check(r: &Req, max_body: u64) {
    let (method, path, target, headers, body, keep_alive) = r;
    assert!(body.len() as u64 <= max_body, "body of {} bytes over the limit {max_body}", body.len());
    assert!(!method.is_empty(), "empty method");
    assert_eq!(Some(path.as_str()), target.split('?').next(), "path is not the target up to '?'");
    for (n, _) in headers {
        assert!(!n.is_empty() && *n == n.to_ascii_lowercase(), "header name {n:?} not lower-cased");
    }
    let te = header(headers, "transfer-encoding").map(|v| String::from_utf8_lossy(v).trim().to_ascii_lowercase());
    let chunked = te.as_deref() == Some("chunked");
    if chunked {
        assert!(header(headers, "content-length").is_none(), "chunked request with a content-length was accepted");
    } else {
        assert!(te.is_none() || te.as_deref() == Some("identity"), "transfer-encoding {te:?} was accepted");
        match header(headers, "content-length") {
            Some(cl) => {
                let n: u64 = std::str::from_utf8(cl).unwrap().trim().parse().expect("accepted content-length is a number");
                assert_eq!(body.len() as u64, n, "body length differs from its content-length");
            }
            None => assert!(body.is_empty(), "a body without content-length or chunked framing"),
        }
    }
    match header(headers, "connection") {
        Some(v) if v.eq_ignore_ascii_case(b"close") => assert!(!keep_alive),
        Some(v) if v.eq_ignore_ascii_case(b"keep-alive") => assert!(keep_alive),
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let (cfg, input) = data.split_at(2);
    let max_body = [0, 7, 1024, 64 << 20][usize::from(cfg[0] & 3)];
    let stall = cfg[0] & 4 != 0;
    let chunk = if cfg[1] >= 0xf0 { 4096 } else { 1 + usize::from(cfg[1] % 32) };

    let (oks, fail, written) = run(input, max_body, usize::MAX, false);
    assert_ne!(fail, Fail::TimedOut, "a closed stream timed out");
    for r in &oks {
        check(r, max_body);
    }
    assert!(written.chunks(CONTINUE.len()).all(|c| c == CONTINUE), "the server wrote more than 100 Continue: {written:?}");

    if input.len() <= 8000 {
        let split = run(input, max_body, chunk, false);
        assert_eq!((&oks, &fail, &written), (&split.0, &split.1, &split.2), "splitting the stream into {chunk}-byte reads changed the result");
    }
    if stall {
        let (s_oks, s_fail, _) = run(input, max_body, chunk, true);
        assert_eq!(oks, s_oks, "a stalling peer got different requests");
        assert!(s_fail == fail || s_fail == Fail::TimedOut, "stalling peer: {s_fail:?}, closing peer: {fail:?}");
    }
});
