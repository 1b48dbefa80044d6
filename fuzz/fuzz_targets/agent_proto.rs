//! `envbox::agent::proto`: frame headers, frame streams, exec payloads and
//! the JSON control messages, on arbitrary bytes (the agent reads frames a
//! sandboxed process may reach; the host reads frames from the agent).
//!
//! Invariants:
//! - no panic;
//! - `parse_header`: accepted iff 1 <= length <= MAX_FRAME + 1; the payload
//!   length is the length minus the kind byte, the kind is byte 4;
//! - `read_frame` over a stream: every frame re-encodes with `write_frame`
//!   to exactly the bytes it was read from; `Ok(None)` only when fewer than
//!   5 bytes were left (a partial header counts as the end of the stream);
//!   `read_frame_async` reads the same frames with the same outcome;
//! - `decode_exec`: `Ok((req, cmd))` only if `cmd` is the part after the
//!   first NUL, has no NUL and is at most MAX_COMMAND bytes; `encode_exec`
//!   of the result decodes to the same request and command;
//! - control messages (`ExecRequest`, `ExecDone`, `AgentError`,
//!   `ResetRequest`, `ResetDone`, `Pong`) that deserialize re-serialize
//!   with `proto::json` to something that deserializes to the same value.
#![no_main]

mod common;

use envbox::agent::proto::{
    decode_exec, encode_exec, json, parse_header, read_frame, read_frame_async, write_frame, AgentError, ExecDone, ExecRequest, Pong,
    ResetDone, ResetRequest, MAX_COMMAND, MAX_FRAME,
};
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;

thread_local! {
    static RT: tokio::runtime::Runtime = common::paused_runtime();
}

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(payload: &[u8]) {
    if let Ok(v) = serde_json::from_slice::<T>(payload) {
        let again: T = serde_json::from_slice(&json(&v)).expect("re-serialized message parses");
        assert_eq!(v, again);
    }
}

type Frames = (Vec<(u8, Vec<u8>)>, Option<std::io::ErrorKind>);

fn read_all(data: &[u8]) -> Frames {
    let mut r = data;
    let mut frames = Vec::new();
    loop {
        let before = r.len();
        match read_frame(&mut r) {
            Ok(Some((kind, payload))) => {
                let consumed = &data[data.len() - before..data.len() - r.len()];
                let mut again = Vec::new();
                write_frame(&mut again, kind, &payload).expect("write_frame");
                assert_eq!(again, consumed, "frame does not re-encode to its bytes");
                frames.push((kind, payload));
            }
            Ok(None) => {
                assert!(before < 5, "end of stream reported with {before} bytes left");
                return (frames, None);
            }
            Err(e) => return (frames, Some(e.kind())),
        }
    }
}

fn read_all_async(data: &[u8]) -> Frames {
    RT.with(|rt| {
        rt.block_on(async {
            let mut r = common::Mem::new(data, 7, false);
            let mut frames = Vec::new();
            loop {
                match read_frame_async(&mut r).await {
                    Ok(Some(f)) => frames.push(f),
                    Ok(None) => return (frames, None),
                    Err(e) => return (frames, Some(e.kind())),
                }
            }
        })
    })
}

fuzz_target!(|data: &[u8]| {
    if data.len() >= 5 {
        let head: [u8; 5] = data[..5].try_into().unwrap();
        let len = u32::from_le_bytes(head[..4].try_into().unwrap()) as usize;
        match parse_header(head) {
            Ok((kind, n)) => {
                assert!((1..=MAX_FRAME + 1).contains(&len), "length {len} accepted");
                assert_eq!((kind, n), (head[4], len - 1));
            }
            Err(_) => assert!(len == 0 || len > MAX_FRAME + 1, "length {len} refused"),
        }
    }

    let sync = read_all(data);
    assert_eq!(sync, read_all_async(data), "async and blocking readers disagree");

    match decode_exec(data) {
        Ok((req, cmd)) => {
            let nul = data.iter().position(|&b| b == 0).expect("accepted without a NUL");
            assert_eq!(cmd, &data[nul + 1..]);
            assert!(!cmd.contains(&0) && cmd.len() <= MAX_COMMAND);
            let enc = encode_exec(&req, cmd);
            let (req2, cmd2) = decode_exec(&enc).expect("encoded exec request decodes");
            assert_eq!((&req, cmd), (&req2, cmd2));
        }
        Err(e) => assert!(!e.is_empty()),
    }

    round_trip::<ExecRequest>(data);
    round_trip::<ExecDone>(data);
    round_trip::<AgentError>(data);
    round_trip::<ResetRequest>(data);
    round_trip::<ResetDone>(data);
    round_trip::<Pong>(data);
});
