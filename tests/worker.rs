//! The python worker on its own (no sandbox): tests/fixtures/worker_harness.py
//! drives src/agent/worker.py over its two pipes through every case of its
//! protocol (loading, method listing, calls, errors, serialization,
//! concurrency, cancellation, crashes, compatibility modules, signals).

use std::process::Command;

#[test]
fn the_worker_protocol_holds() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = ["/usr/bin/python3", "python3"].into_iter().find(|p| Command::new(p).arg("-V").output().is_ok_and(|o| o.status.success()));
    let Some(python) = python else {
        panic!("the worker tests need python3 (apt install python3)");
    };
    let out = Command::new(python).arg(dir.join("tests/fixtures/worker_harness.py")).arg("--python").arg(python).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "worker_harness.py failed:\n{text}");
}
