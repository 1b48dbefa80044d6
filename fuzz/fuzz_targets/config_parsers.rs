//! The CLI's value parsers in `envbox::config` on arbitrary strings.
//!
//! Invariants (besides no panic):
//! - `validate_name` accepts exactly `[A-Za-z0-9][A-Za-z0-9_.-]{0,63}`;
//! - `parse_size`: `Ok(n)` implies `n >= 1 MiB`; a plain number of bytes
//!   is that number;
//! - `parse_cpus`: `Ok(m)` implies 10 <= m <= 4_096_000 (0.01 to 4096 CPUs);
//! - `parse_pids`: `Ok(n)` iff the trimmed input is a u64 >= 1, and then n is it;
//! - `parse_env`: `Ok((k, v))` implies `k=v` is the input, `k` is non-empty
//!   and has no `=`, neither has NUL;
//! - `parse_publish`: a bare u16 is 127.0.0.1:that port; any result prints
//!   and parses back to itself;
//! - `Volume::from_str`: both paths absolute, no NUL, and the volume prints
//!   back (`HOST:CONTAINER[:ro]`) to an equal volume;
//! - `EnvKind::from_str` / `Network::from_str` accept only their spellings
//!   (Network: single lower-case words; `none` and `host` map to their variants).
#![no_main]

use std::str::FromStr;

use envbox::config::{parse_cpus, parse_env, parse_publish, parse_pids, parse_size, validate_name, EnvKind, Network, Volume};
use libfuzzer_sys::fuzz_target;

fn name_ok(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };

    assert_eq!(validate_name(s).is_ok(), name_ok(s), "validate_name({s:?})");

    if let Ok(n) = parse_size(s) {
        assert!(n >= 1 << 20, "parse_size({s:?}) = {n} < 1 MiB");
    }
    let digits = s.trim();
    if let Ok(n) = digits.parse::<u64>() {
        if n >= 1 << 20 && digits.bytes().all(|b| b.is_ascii_digit()) {
            assert_eq!(parse_size(s).ok(), Some(n), "parse_size({s:?})");
        }
    }

    if let Ok(m) = parse_cpus(s) {
        assert!((10..=4_096_000).contains(&m), "parse_cpus({s:?}) = {m}");
    }

    let pids = s.trim().parse::<u64>().ok().filter(|&n| n >= 1);
    assert_eq!(parse_pids(s).ok(), pids, "parse_pids({s:?})");

    if let Ok((k, v)) = parse_env(s) {
        assert_eq!(format!("{k}={v}"), s);
        assert!(!k.is_empty() && !k.contains('=') && !k.contains('\0') && !v.contains('\0'), "parse_env({s:?})");
    }

    if let Ok(addr) = parse_publish(s) {
        if let Ok(port) = s.parse::<u16>() {
            assert_eq!(addr, std::net::SocketAddr::from(([127, 0, 0, 1], port)));
        }
        assert_eq!(parse_publish(&addr.to_string()).ok(), Some(addr), "publish {s:?} does not print back");
    }

    if let Ok(v) = Volume::from_str(s) {
        let host = v.host.to_str().expect("host path from a str");
        assert!(host.starts_with('/') && v.container.starts_with('/'), "volume {s:?}: relative path");
        assert!(!host.contains('\0') && !v.container.contains('\0'), "volume {s:?}: NUL");
        let printed = format!("{host}:{}{}", v.container, if v.read_only { ":ro" } else { "" });
        assert_eq!(Volume::from_str(&printed).ok(), Some(v.clone()), "volume {s:?} does not print back");
    }

    match EnvKind::from_str(s) {
        Ok(EnvKind::Function) => assert!(matches!(s, "function" | "function_based")),
        Ok(EnvKind::Http) => assert!(matches!(s, "http" | "http_based")),
        Err(_) => assert!(!matches!(s, "function" | "function_based" | "http" | "http_based")),
    }
    let _ = EnvKind::detect(s);
    // Accepted spellings are single lower-case words ("none", "host", ...);
    // the two original ones map to their variants.
    match Network::from_str(s) {
        Ok(n) => {
            assert!(!s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase()), "network mode {s:?} accepted");
            match s {
                "none" => assert_eq!(n, Network::None),
                "host" => assert_eq!(n, Network::Host),
                _ => assert!(n != Network::None && n != Network::Host, "{s:?} parsed to {n:?}"),
            }
        }
        Err(_) => assert!(s != "none" && s != "host"),
    }
});
