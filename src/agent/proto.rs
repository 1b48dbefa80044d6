//! The wire protocol between host-side clients and the sandbox agent.
//!
//! A frame is `u32 little-endian length | u8 kind | payload`, where `length`
//! counts the kind byte and the payload. Control payloads are JSON; output
//! payloads are raw bytes, so binary output round-trips exactly.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

/// Largest frame either side accepts (a command plus its JSON header).
pub const MAX_FRAME: usize = 8 << 20;
/// Largest shell command accepted.
pub const MAX_COMMAND: usize = 4 << 20;

/// Frame kinds.
pub mod kind {
    /// client → agent: [`super::ExecRequest`] JSON, a NUL byte, then the command bytes.
    pub const EXEC: u8 = 1;
    /// client → agent: [`super::ResetRequest`] JSON, with the new overlay mounts as SCM_RIGHTS.
    pub const RESET: u8 = 2;
    /// client → agent: are you there?
    pub const PING: u8 = 3;
    /// host → agent, on the control channel, last message of a create: the
    /// sandbox is recorded as running; its agent may outlive the creator.
    pub const COMMIT: u8 = 4;
    /// agent → client: a chunk of stdout.
    pub const STDOUT: u8 = 10;
    /// agent → client: a chunk of stderr.
    pub const STDERR: u8 = 11;
    /// agent → client: [`super::ExecDone`] JSON.
    pub const DONE: u8 = 12;
    /// agent → client: [`super::AgentError`] JSON.
    pub const ERROR: u8 = 13;
    /// agent → client: [`super::ResetDone`] JSON.
    pub const RESET_DONE: u8 = 14;
    /// agent → client: [`super::Pong`] JSON.
    pub const PONG: u8 = 15;
}

/// Options of one command.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExecRequest {
    pub timeout_ms: Option<u64>,
    pub max_output: u64,
}

/// How a command ended.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExecDone {
    pub exit_code: i32,
    pub timed_out: bool,
    /// The memory cgroup recorded an OOM kill while the command ran.
    pub oom_killed: bool,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    /// The shell exited or was killed; the next command gets a fresh one
    /// (cwd and exported variables are back to their initial values).
    pub shell_restarted: bool,
    pub duration_us: u64,
}

/// Error kinds the agent reports.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request was malformed (bad frame, NUL in the command, too large).
    BadRequest,
    /// A reset aborted the command.
    AbortedByReset,
    /// The shell could not be started.
    ShellSpawn,
    /// Resetting the filesystem failed; the sandbox is unusable.
    ResetFailed,
}

/// An error reply.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AgentError {
    pub kind: ErrorKind,
    pub message: String,
}

/// A reset: the new generation's name. The frame carries, as SCM_RIGHTS,
/// one detached overlay mount per overlay of the sandbox, in order.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ResetRequest {
    pub generation: String,
    /// How many of the fds that come with the request, after the overlay
    /// mounts, are leases (of a snapshot layer the new root stands on) to
    /// hold until the next reset.
    #[serde(default)]
    pub leases: usize,
}

/// Reply to a reset.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ResetDone {
    pub duration_us: u64,
    pub generation: String,
}

/// Reply to a ping.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Pong {
    pub generation: String,
}

fn header(kind: u8, payload_len: usize) -> io::Result<[u8; 5]> {
    let len = u32::try_from(payload_len + 1).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame too large"))?;
    let mut head = [0u8; 5];
    head[..4].copy_from_slice(&len.to_le_bytes());
    head[4] = kind;
    Ok(head)
}

/// Writes one frame.
pub fn write_frame(w: &mut impl Write, kind: u8, payload: &[u8]) -> io::Result<()> {
    let head = header(kind, payload.len())?;
    // One write for small frames keeps a round trip to one syscall each way.
    if payload.len() <= 4096 {
        let mut buf = Vec::with_capacity(5 + payload.len());
        buf.extend_from_slice(&head);
        buf.extend_from_slice(payload);
        w.write_all(&buf)
    } else {
        w.write_all(&head)?;
        w.write_all(payload)
    }
}

/// Parses a frame header; returns `(kind, payload length)`.
pub fn parse_header(head: [u8; 5]) -> io::Result<(u8, usize)> {
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    if len == 0 || len > MAX_FRAME + 1 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("bad frame length {len}")));
    }
    Ok((head[4], len - 1))
}

/// Reads one frame (blocking); `Ok(None)` at a clean end of stream.
pub fn read_frame(r: &mut impl Read) -> io::Result<Option<(u8, Vec<u8>)>> {
    let mut head = [0u8; 5];
    match r.read_exact(&mut head) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let (kind, len) = parse_header(head)?;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)?;
    Ok(Some((kind, payload)))
}

/// Encodes an exec request payload.
pub fn encode_exec(req: &ExecRequest, command: &[u8]) -> Vec<u8> {
    let mut out = serde_json::to_vec(req).unwrap_or_default();
    out.push(0);
    out.extend_from_slice(command);
    out
}

/// Decodes an exec request payload.
pub fn decode_exec(payload: &[u8]) -> Result<(ExecRequest, &[u8]), String> {
    let split = payload.iter().position(|&b| b == 0).ok_or("exec request without a command")?;
    let req: ExecRequest = serde_json::from_slice(&payload[..split]).map_err(|e| format!("bad exec request: {e}"))?;
    let command = &payload[split + 1..];
    if command.len() > MAX_COMMAND {
        return Err(format!("command is {} bytes; the limit is {MAX_COMMAND}", command.len()));
    }
    if command.contains(&0) {
        return Err("command contains a NUL byte".to_string());
    }
    Ok((req, command))
}

/// Async twin of [`read_frame`] for the agent.
pub async fn read_frame_async(r: &mut (impl tokio::io::AsyncRead + Unpin)) -> io::Result<Option<(u8, Vec<u8>)>> {
    use tokio::io::AsyncReadExt;
    let mut head = [0u8; 5];
    match r.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let (kind, len) = parse_header(head)?;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    Ok(Some((kind, payload)))
}

/// Async twin of [`write_frame`] for the agent.
pub async fn write_frame_async(w: &mut (impl tokio::io::AsyncWrite + Unpin), kind: u8, payload: &[u8]) -> io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let head = header(kind, payload.len())?;
    if payload.len() <= 4096 {
        let mut buf = Vec::with_capacity(5 + payload.len());
        buf.extend_from_slice(&head);
        buf.extend_from_slice(payload);
        w.write_all(&buf).await
    } else {
        w.write_all(&head).await?;
        w.write_all(payload).await
    }
}

/// Serializes a control message (these types cannot fail to serialize).
pub fn json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_binary_payloads() {
        let mut buf = Vec::new();
        let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        write_frame(&mut buf, kind::STDOUT, b"\xff\xfe\x00abc").unwrap();
        write_frame(&mut buf, kind::STDERR, &big).unwrap();
        let mut r = &buf[..];
        assert_eq!(read_frame(&mut r).unwrap().unwrap(), (kind::STDOUT, b"\xff\xfe\x00abc".to_vec()));
        assert_eq!(read_frame(&mut r).unwrap().unwrap(), (kind::STDERR, big));
        assert!(read_frame(&mut r).unwrap().is_none());
    }

    #[test]
    fn oversized_and_empty_frames_are_rejected() {
        let mut head = [0u8; 5];
        head[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse_header(head).is_err());
        assert!(parse_header([0; 5]).is_err());
        // A truncated frame is an error, not a silent end of stream.
        let mut buf = Vec::new();
        write_frame(&mut buf, kind::PING, b"12345").unwrap();
        buf.truncate(7);
        assert!(read_frame(&mut &buf[..]).is_err());
    }

    #[test]
    fn exec_payloads_reject_nul_and_huge_commands() {
        let req = ExecRequest { timeout_ms: Some(5), max_output: 10 };
        let p = encode_exec(&req, b"echo hi");
        let (r, c) = decode_exec(&p).unwrap();
        assert_eq!((r, c), (req.clone(), &b"echo hi"[..]));
        assert!(decode_exec(&encode_exec(&req, b"a\0b")).unwrap_err().contains("NUL"));
        assert!(decode_exec(&encode_exec(&req, &vec![b'x'; MAX_COMMAND + 1])).unwrap_err().contains("limit"));
        assert!(decode_exec(b"{not json}\0x").is_err());
        assert!(decode_exec(b"no separator").is_err());
    }
}
