//! Criterion micro-benchmarks of the sandbox lifecycle (root only):
//! `cargo bench --bench lifecycle`. The concurrent workload and the
//! comparison with agentdocker-lite are `envbox bench` and
//! benches/compare_agentdocker_lite.py.

use criterion::{criterion_group, criterion_main, Criterion};
use envbox::{Sandbox, SandboxConfig};

fn config() -> SandboxConfig {
    let root = std::env::temp_dir().join(format!("envbox-criterion-{}", std::process::id()));
    SandboxConfig { root, ..Default::default() }
}

fn lifecycle(c: &mut Criterion) {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("benches/lifecycle requires root. Skipping.");
        return;
    }
    let cfg = config();
    let sb = Sandbox::create(&cfg, "crit-exec").expect("create");
    sb.run("true").expect("warm up");
    c.bench_function("exec_true", |b| b.iter(|| sb.run("true").expect("run")));
    c.bench_function("exec_bin_true", |b| b.iter(|| sb.run("/bin/true").expect("run")));
    c.bench_function("reset_after_write", |b| {
        b.iter(|| {
            sb.run("echo x > /tmp/x").expect("write");
            sb.reset().expect("reset")
        })
    });
    drop(sb);
    let mut i = 0u64;
    c.bench_function("create_delete", |b| {
        b.iter(|| {
            i += 1;
            Sandbox::create(&cfg, &format!("crit-{i}")).expect("create").delete().expect("delete")
        })
    });
    let _ = std::fs::remove_dir_all(&cfg.root);
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30);
    targets = lifecycle
}
criterion_main!(benches);
