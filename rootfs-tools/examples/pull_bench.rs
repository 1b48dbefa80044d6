//! Pull + unpack throughput from a loopback registry (a benchmark, not a test).
//!
//!     cargo run --release -p envbox-rootfs --example pull_bench -- [TOTAL_MB] [LAYERS] [RUNS]
//!
//! Needs root-free nothing but /usr/bin/docker-registry and /usr/bin/skopeo. Builds an OCI
//! layout of LAYERS gzip layers holding TOTAL_MB of files (text-like data that gzips about
//! 3:1, like real layers), pushes it to a docker-registry on a free 127.0.0.1 port, then
//! pulls it RUNS times into a fresh store each time and prints MB/s of layer data
//! (uncompressed tar bytes unpacked per second of the whole pull), and per CPU-second of this
//! process (a figure that does not depend on what else the machine is doing).

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use envbox_rootfs::fixtures::oci::{put_gzip_layer, write_image};
use envbox_rootfs::oci::{ConfigFile, RootFs};
use envbox_rootfs::{PullOptions, Reference, Store};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let total_mb: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(512);
    let layers: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(4);
    let runs: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(3);
    let tmp = tempfile::tempdir().expect("tempdir");

    let t = Instant::now();
    let layout = tmp.path().join("layout");
    let (tar_bytes, gz_bytes) = build_layout(&layout, total_mb, layers);
    eprintln!(
        "layout: {layers} layers, {:.0} MB of tar, {:.0} MB gzipped, built in {:.1}s",
        tar_bytes as f64 / 1e6,
        gz_bytes as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );

    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let conf = tmp.path().join("config.yml");
    fs::write(
        &conf,
        format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            tmp.path().join("registry").display()
        ),
    )
    .unwrap();
    let mut registry = Command::new("/usr/bin/docker-registry")
        .arg("serve")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start /usr/bin/docker-registry (apt-get install docker-registry)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "docker-registry did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let t = Instant::now();
    let status = Command::new("skopeo")
        .args(["copy", "--quiet", "--insecure-policy", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:bench", layout.display()))
        .arg(format!("docker://127.0.0.1:{port}/bench/image:v1"))
        .status()
        .expect("run skopeo");
    assert!(status.success(), "skopeo copy failed");
    eprintln!("pushed in {:.1}s", t.elapsed().as_secs_f64());

    let r = Reference::parse(&format!("127.0.0.1:{port}/bench/image:v1")).unwrap();
    let mut rates = Vec::new();
    for i in 0..runs {
        let root = tmp.path().join(format!("store{i}"));
        let store = Store::open(&root).unwrap();
        let (t, cpu0) = (Instant::now(), cpu_secs());
        let (_img, rep) = store.pull_with_report(&r, &PullOptions { progress: false, ..PullOptions::default() }).unwrap();
        let (secs, cpu) = (t.elapsed().as_secs_f64(), cpu_secs() - cpu0);
        let mb = rep.bytes_unpacked as f64 / 1e6;
        let rate = mb / secs;
        println!(
            "run {}: {mb:.0} MB of layer data in {secs:.2}s = {rate:.0} MB/s (CPU {cpu:.2}s: {:.0} MB per CPU-second)",
            i + 1,
            mb / cpu
        );
        rates.push(rate);
        fs::remove_dir_all(&root).unwrap();
    }
    rates.sort_by(|a, b| a.total_cmp(b));
    println!("pull+unpack throughput: median {:.0} MB/s, best {:.0} MB/s ({runs} runs)", rates[rates.len() / 2], rates[rates.len() - 1]);
    let _ = registry.kill();
    let _ = registry.wait();
}

/// user + system CPU time of this process (all threads, finished ones included), from /proc.
fn cpu_secs() -> f64 {
    let stat = fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = after.split_whitespace().map(|x| x.parse().unwrap_or(0.0)).collect();
    // fields 14 and 15 of stat(5) are the 12th and 13th after the command name
    (f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)) / 100.0
}

/// Text-like bytes (words from a small vocabulary): gzips about 3:1 like typical layers.
fn fill(buf: &mut [u8], seed: &mut u64) {
    const WORDS: [&[u8]; 16] = [
        b"the ",
        b"import ",
        b"return ",
        b"lib",
        b"/usr/",
        b"0x7f",
        b"python ",
        b"def ",
        b"static ",
        b"{\n",
        b"}\n",
        b"class ",
        b"int ",
        b"self.",
        b"error ",
        b"\x00\x01\x02",
    ];
    let mut i = 0;
    while i < buf.len() {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        let w = WORDS[usize::try_from(*seed % 16).unwrap()];
        let n = w.len().min(buf.len() - i);
        buf[i..i + n].copy_from_slice(&w[..n]);
        i += n;
        if *seed % 7 == 0 && i < buf.len() {
            buf[i] = u8::try_from((*seed >> 20) % 256).unwrap();
            i += 1;
        }
    }
}

fn build_layout(dir: &Path, total_mb: usize, layers: usize) -> (u64, u64) {
    fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let per_layer = (total_mb << 20) / layers.max(1);
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let (mut descs, mut diff_ids, mut tar_total, mut gz_total) = (Vec::new(), Vec::new(), 0u64, 0u64);
    for l in 0..layers {
        let mut b = tar::Builder::new(Vec::with_capacity(per_layer + (1 << 20)));
        let mut left = per_layer;
        let mut n = 0;
        while left > 0 {
            // a mix of file sizes: many small, some large
            let size = match n % 10 {
                0 => 8 << 20,
                1..=3 => 256 << 10,
                _ => 16 << 10,
            }
            .min(left);
            let mut data = vec![0u8; size];
            fill(&mut data, &mut seed);
            let mut h = tar::Header::new_gnu();
            h.set_size(size as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, format!("layer{l}/dir{}/file{n}", n % 50), &data[..]).unwrap();
            left -= size;
            n += 1;
        }
        let tar = b.into_inner().unwrap();
        let (desc, diff_id) = put_gzip_layer(dir, &tar);
        tar_total += tar.len() as u64;
        gz_total += desc.size;
        descs.push(desc);
        diff_ids.push(diff_id);
    }
    let config = ConfigFile {
        architecture: "amd64".into(),
        os: "linux".into(),
        created: None,
        config: None,
        rootfs: RootFs { kind: "layers".into(), diff_ids },
    };
    write_image(dir, &config, descs, "bench");
    (tar_total, gz_total)
}
