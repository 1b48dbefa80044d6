//! `envbox::agent::shell::{take_completion, quote, command_line}`.
//!
//! `take_completion` reads what the shell writes on its signal pipe, which
//! a command running in the shell can also write to. It is fed a sequence of
//! arbitrary pieces, as the agent does (one call per read).
//!
//! Invariants of each call:
//! - no panic; the buffer never grows: it becomes the part after the last
//!   newline, or empty if that is longer than 4096 bytes;
//! - `Some(code)` only when a complete line is `<nonce> <code>` (the code
//!   trimmed of whitespace, as `i32::from_str` reads it); the last such
//!   line wins; every complete line exactly `<nonce> <i32>` is found.
//!   (Precondition, as with real nonces, which are hex: the nonce has no
//!   space, newline or U+FFFD.)
//!
//! `quote`: for any bytes, the result is one shell word: it starts and ends
//! with `'`, and a POSIX-shell reading of single quotes and `\'` outside
//! them gives back exactly the input (no byte escapes the quoting).
//! `command_line` embeds exactly that word after `{ eval `.
#![no_main]

use arbitrary::Arbitrary;
use envbox::agent::shell::{command_line, quote, take_completion};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    nonce: String,
    pieces: Vec<Vec<u8>>,
    command: Vec<u8>,
}

/// Undoes POSIX single quoting: `'...'` spans and `\'`; `None` if any other
/// byte stands outside quotes or a quote is left open.
fn unquote(word: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < word.len() {
        match word[i] {
            b'\'' => {
                let end = word[i + 1..].iter().position(|&b| b == b'\'')? + i + 1;
                out.extend_from_slice(&word[i + 1..end]);
                i = end + 1;
            }
            b'\\' if word.get(i + 1) == Some(&b'\'') => {
                out.push(b'\'');
                i += 2;
            }
            _ => return None,
        }
    }
    Some(out)
}

/// The code a complete line reports for `nonce`, if any.
fn record(line: &[u8], nonce: &str) -> Option<i32> {
    let rest = line.strip_prefix(nonce.as_bytes())?.strip_prefix(b" ")?;
    std::str::from_utf8(rest).ok()?.trim().parse().ok()
}

fn check_call(buf: &mut Vec<u8>, nonce: &str) {
    let before = buf.clone();
    let found = take_completion(buf, nonce);
    let last_nl = before.iter().rposition(|&b| b == b'\n');
    let tail = &before[last_nl.map_or(0, |i| i + 1)..];
    let expect_buf: &[u8] = if tail.len() > 4096 { b"" } else { tail };
    assert_eq!(&buf[..], expect_buf, "buffer after the call");
    let lines: Vec<&[u8]> = match last_nl {
        Some(i) => before[..i].split(|&b| b == b'\n').collect(),
        None => Vec::new(),
    };
    let expected = lines.iter().rev().find_map(|l| record(l, nonce));
    assert_eq!(found, expected, "completion of {before:?} for nonce {nonce:?}");
    for l in &lines {
        if let Some(code) = l.strip_prefix(nonce.as_bytes()).and_then(|r| r.strip_prefix(b" ")) {
            if std::str::from_utf8(code).ok().and_then(|c| c.parse::<i32>().ok()).is_some() {
                assert!(found.is_some(), "missed the record {l:?}");
            }
        }
    }
}

fuzz_target!(|input: Input| {
    let Input { nonce, pieces, command } = input;
    if !nonce.contains([' ', '\n', '\u{fffd}']) {
        let mut buf = Vec::new();
        for p in pieces.iter().take(64) {
            buf.extend_from_slice(p);
            check_call(&mut buf, &nonce);
        }
        // And a genuine record on a line of its own after whatever came before.
        buf.extend_from_slice(format!("\n{nonce} 7\n").as_bytes());
        assert_eq!(take_completion(&mut buf, &nonce), Some(7));
    }

    let q = quote(&command);
    assert!(q.len() >= 2 && q[0] == b'\'' && q[q.len() - 1] == b'\'', "not single-quoted: {q:?}");
    assert_eq!(unquote(&q).as_deref(), Some(&command[..]), "quoting does not round-trip: {q:?}");
    let line = command_line(&command, "n0nce");
    let mut head = b"{ eval ".to_vec();
    head.extend_from_slice(&q);
    head.extend_from_slice(b"; }");
    assert!(line.starts_with(&head), "command line does not start with the quoted command");
    assert!(line.ends_with(b" n0nce \"$?\" >&3\n\n"));
});
