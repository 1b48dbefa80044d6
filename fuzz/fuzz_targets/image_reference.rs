//! `envbox_rootfs::Reference::parse` (and the runtime's image spec check)
//! on arbitrary strings.
//!
//! Invariants (besides no panic):
//! - a parsed reference prints to a string that parses back to an equal
//!   reference (printing is canonical: a fixed point after one round);
//! - the printed form has no whitespace or control characters, and it is
//!   at most a few hundred bytes longer than the input (defaults added);
//! - `envbox::images::check_spec` agrees with `Reference::parse` for
//!   inputs that are not local sources (`oci:`, `docker-archive:`).
#![no_main]

use envbox_rootfs::Reference;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let parsed = Reference::parse(s);
    if !(s.starts_with("oci:") || s.starts_with("docker-archive:")) {
        assert_eq!(parsed.is_ok(), envbox::images::check_spec(s).is_ok(), "{s:?}");
    }
    let Ok(r) = parsed else { return };
    let printed = r.to_string();
    assert!(!printed.chars().any(|c| c.is_whitespace() || c.is_control()), "{s:?} printed as {printed:?}");
    assert!(printed.len() <= s.len() + 256, "{s:?} printed as {printed:?}");
    let again = Reference::parse(&printed).unwrap_or_else(|e| panic!("{s:?} printed as {printed:?}, which does not parse: {e}"));
    assert_eq!(again, r, "{s:?}");
    assert_eq!(again.to_string(), printed, "{s:?}");
});
