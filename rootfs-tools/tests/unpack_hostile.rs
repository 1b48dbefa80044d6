//! SECURITY.md U1–U9 at the layer level: each case builds its hostile tar here, with raw
//! headers where the `tar` crate's builder would refuse the name.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use envbox_rootfs::unpack::{unpack_blob, unpack_tar, Limits, UnpackError, UnpackStats, OPAQUE_XATTR};
use envbox_rootfs::Digest;
use tar::{EntryType, Header};

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

macro_rules! require_root {
    ($name:expr) => {
        if !is_root() {
            if std::env::var_os("SANDBOX_TESTS_MUST_RUN").is_some() {
                panic!("{} requires root (SANDBOX_TESTS_MUST_RUN is set)", $name);
            }
            eprintln!("{} requires root. Skipping test.", $name);
            return;
        }
    };
}

/// One tar entry, written with its name and link name as raw bytes (no sanitising).
enum E<'a> {
    File(&'a str, &'a [u8]),
    FileMode(&'a str, &'a [u8], u32),
    Dir(&'a str, u32),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    Dev(&'a str, EntryType),
    Fifo(&'a str),
}

fn header(name: &str, kind: EntryType, size: u64, link: &str, mode: u32) -> Header {
    let mut h = Header::new_gnu();
    {
        let g = h.as_gnu_mut().unwrap();
        assert!(name.len() <= g.name.len() && link.len() <= g.linkname.len());
        g.name[..name.len()].copy_from_slice(name.as_bytes());
        g.linkname[..link.len()].copy_from_slice(link.as_bytes());
    }
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_cksum();
    h
}

fn tar_of(entries: &[E<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let (h, data): (Header, &[u8]) = match *e {
            E::File(n, d) => (header(n, EntryType::Regular, d.len() as u64, "", 0o644), d),
            E::FileMode(n, d, m) => (header(n, EntryType::Regular, d.len() as u64, "", m), d),
            E::Dir(n, m) => (header(n, EntryType::Directory, 0, "", m), b""),
            E::Symlink(n, t) => (header(n, EntryType::Symlink, 0, t, 0o777), b""),
            E::Hardlink(n, t) => (header(n, EntryType::Link, 0, t, 0o644), b""),
            E::Dev(n, k) => (header(n, k, 0, "", 0o666), b""),
            E::Fifo(n) => (header(n, EntryType::Fifo, 0, "", 0o600), b""),
        };
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

/// `<tmp>/outside/` (a victim directory with a file) and `<tmp>/a/b/layer/` (the unpack dir),
/// so `../../x` from the layer would be `<tmp>/a/x`.
struct Scene {
    _tmp: tempfile::TempDir,
    top: PathBuf,
    outside: PathBuf,
    layer: PathBuf,
}

fn scene() -> Scene {
    let tmp = tempfile::tempdir().unwrap();
    let top = tmp.path().to_path_buf();
    let outside = top.join("outside");
    fs::create_dir(&outside).unwrap();
    fs::set_permissions(&outside, fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(outside.join("victim"), b"precious").unwrap();
    let layer = top.join("a/b/layer");
    fs::create_dir_all(&layer).unwrap();
    Scene { _tmp: tmp, top, outside, layer }
}

impl Scene {
    fn unpack(&self, entries: &[E<'_>]) -> Result<UnpackStats, UnpackError> {
        unpack_tar(&tar_of(entries)[..], &self.layer, None, &Limits::default())
    }

    /// Everything outside the layer dir is as `scene()` made it.
    fn assert_outside_untouched(&self) {
        let mut found = Vec::new();
        walk(&self.top, &mut found);
        found.retain(|p| !p.starts_with(&self.layer));
        found.sort();
        let expect: Vec<PathBuf> = ["a", "a/b", "outside", "outside/victim"].iter().map(|p| self.top.join(p)).collect();
        assert_eq!(found, expect, "something was created or removed outside the layer");
        assert_eq!(fs::read(self.outside.join("victim")).unwrap(), b"precious");
        assert_eq!(fs::metadata(&self.outside).unwrap().permissions().mode() & 0o7777, 0o755);
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        out.push(p.clone());
        if fs::symlink_metadata(&p).unwrap().is_dir() {
            walk(&p, out);
        }
    }
}

#[test]
fn u1_absolute_names_are_rooted_in_the_layer() {
    let s = scene();
    s.unpack(&[E::File("/etc/cron.d/x", b"job")]).unwrap();
    assert_eq!(fs::read(s.layer.join("etc/cron.d/x")).unwrap(), b"job");
    s.assert_outside_untouched();
}

#[test]
fn u1_dot_dot_above_the_root_is_refused() {
    for name in ["../../x", "a/../../x", "./../x", "../x/", "x/../../../../../../x"] {
        let s = scene();
        let err = s.unpack(&[E::File(name, b"pwn")]).unwrap_err();
        assert!(matches!(err, UnpackError::EscapesRoot { .. }), "{name}: {err}");
        assert!(err.to_string().contains("outside the layer"), "{err}");
        s.assert_outside_untouched();
    }
    // `..` that stays inside is just normalised
    let s = scene();
    s.unpack(&[E::File("d/../e/f", b"ok")]).unwrap();
    assert_eq!(fs::read(s.layer.join("e/f")).unwrap(), b"ok");
}

#[test]
fn u2_write_through_a_planted_symlink_stays_in_the_layer() {
    let s = scene();
    let target = s.outside.to_str().unwrap().to_owned();
    s.unpack(&[E::Symlink("evil", &target), E::File("evil/pwn", b"x"), E::File("evil/new/deep/pwn", b"x")]).unwrap();
    // resolved as if the layer were `/`: <layer>/<outside path>/pwn
    let rooted = s.layer.join(target.trim_start_matches('/'));
    assert!(rooted.join("pwn").is_file());
    assert!(rooted.join("new/deep/pwn").is_file());
    s.assert_outside_untouched();

    let s = scene();
    s.unpack(&[E::Symlink("up", ".."), E::File("up/x/y", b"x"), E::Symlink("sub/up2", "../../.."), E::File("sub/up2/z", b"z")]).unwrap();
    assert!(s.layer.join("x/y").is_file());
    assert!(s.layer.join("z").is_file());
    s.assert_outside_untouched();
}

#[test]
fn u3_dir_entry_over_a_symlink_never_chmods_the_target() {
    let s = scene();
    s.unpack(&[
        E::Symlink("sub", "../../../outside"),
        E::Dir("sub", 0o777),
        E::Symlink("abs", s.outside.to_str().unwrap()),
        E::Dir("abs/", 0o777),
    ])
    .unwrap();
    for name in ["sub", "abs"] {
        let md = fs::symlink_metadata(s.layer.join(name)).unwrap();
        assert!(md.is_dir(), "{name} should now be a real directory");
        assert_eq!(md.permissions().mode() & 0o7777, 0o777);
    }
    s.assert_outside_untouched();
}

#[test]
fn u4_whiteout_names_that_escape_are_refused() {
    for name in [".wh..", ".wh...", "etc/.wh..", "etc/.wh...", "x/../.wh.."] {
        let s = scene();
        let err = s.unpack(&[E::Dir("etc", 0o755), E::File(name, b"")]).unwrap_err();
        assert!(matches!(err, UnpackError::BadWhiteout { .. }), "{name}: {err}");
        assert!(s.layer.is_dir(), "{name}: the layer root must survive");
        s.assert_outside_untouched();
    }
}

#[test]
fn u4_whiteouts_become_overlay_char_devices() {
    let s = scene();
    let st = s
        .unpack(&[
            E::File("etc/passwd", b"root"),
            E::File("etc/.wh.passwd", b""),
            E::File("etc/.wh.gone", b""),
            E::File(".wh..wh.plnk", b""),
        ])
        .unwrap();
    assert_eq!(st.whiteouts, 2);
    for n in ["etc/passwd", "etc/gone"] {
        let md = fs::symlink_metadata(s.layer.join(n)).unwrap();
        assert!(md.file_type().is_char_device(), "{n}");
        assert_eq!(md.rdev(), 0, "{n}: overlayfs whiteouts are 0:0");
    }
    s.assert_outside_untouched();
}

#[test]
fn u4_opaque_dirs_keep_this_layers_content() {
    require_root!("u4_opaque_dirs_keep_this_layers_content");
    let s = scene();
    let st = s.unpack(&[E::File("d/keep", b"k"), E::File("d/.wh..wh..opq", b""), E::File(".wh..wh..opq", b"")]).unwrap();
    assert_eq!(st.opaque_dirs, 2);
    assert_eq!(fs::read(s.layer.join("d/keep")).unwrap(), b"k");
    let mut buf = [0u8; 4];
    let n = rustix::fs::getxattr(s.layer.join("d"), OPAQUE_XATTR, &mut buf).unwrap();
    assert_eq!(&buf[..n], b"y");
    // the opaque marker at the root only marks the layer root: it and its parent survive
    assert!(s.layer.is_dir());
    s.assert_outside_untouched();
}

#[test]
fn a_whiteout_then_new_content_of_the_same_name_makes_an_opaque_dir() {
    require_root!("a_whiteout_then_new_content_of_the_same_name_makes_an_opaque_dir");
    let s = scene();
    s.unpack(&[E::File(".wh.a", b""), E::File("a/b", b"new"), E::File(".wh.d", b""), E::Dir("d", 0o755)]).unwrap();
    for d in ["a", "d"] {
        assert!(s.layer.join(d).is_dir(), "{d}");
        let mut buf = [0u8; 4];
        let n = rustix::fs::getxattr(s.layer.join(d), OPAQUE_XATTR, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"y", "{d} hides the lower layers' {d}");
    }
    assert_eq!(fs::read(s.layer.join("a/b")).unwrap(), b"new");
}

#[test]
fn u5_whiteout_under_a_symlinked_parent_stays_in_the_layer() {
    let s = scene();
    s.unpack(&[E::Symlink("l", "/"), E::File("l/.wh.etc", b"")]).unwrap();
    assert!(fs::symlink_metadata(s.layer.join("etc")).unwrap().file_type().is_char_device());
    assert!(Path::new("/etc/passwd").is_file(), "host /etc must be untouched");

    let s = scene();
    let out = s.outside.to_str().unwrap().to_owned();
    s.unpack(&[E::Symlink("l", &out), E::File("l/.wh.victim", b""), E::Symlink("r", "../../.."), E::File("r/outside/.wh.victim", b"")])
        .unwrap();
    s.assert_outside_untouched();
}

#[test]
fn u6_hardlinks_to_outside_are_refused() {
    for target in ["/etc/shadow", "/etc/passwd", "../../outside/victim", "../../../../../etc/passwd"] {
        let s = scene();
        let err = s.unpack(&[E::Hardlink("hl", target)]).unwrap_err();
        assert!(matches!(err, UnpackError::HardlinkTarget { .. }), "{target}: {err}");
        assert!(!s.layer.join("hl").exists());
        s.assert_outside_untouched();
    }
    // a symlinked parent of the target resolves inside the layer, where there is no victim
    let s = scene();
    let out = s.outside.to_str().unwrap().to_owned();
    let err = s.unpack(&[E::Symlink("s", &out), E::Hardlink("hl", "s/victim")]).unwrap_err();
    assert!(matches!(err, UnpackError::HardlinkTarget { .. }), "{err}");
    assert_eq!(fs::metadata(s.outside.join("victim")).unwrap().nlink(), 1);
    s.assert_outside_untouched();
}

#[test]
fn u6_hardlinks_inside_the_layer_work() {
    let s = scene();
    s.unpack(&[E::File("bin/busybox", b"elf"), E::Hardlink("bin/sh", "bin/busybox"), E::Hardlink("/bin/ls", "./bin/busybox")]).unwrap();
    let ino = fs::metadata(s.layer.join("bin/busybox")).unwrap().ino();
    assert_eq!(fs::metadata(s.layer.join("bin/sh")).unwrap().ino(), ino);
    assert_eq!(fs::metadata(s.layer.join("bin/ls")).unwrap().ino(), ino);
}

#[test]
fn u7_devices_skipped_setuid_and_modes_kept() {
    let s = scene();
    let st = s
        .unpack(&[
            E::Dev("dev/sda", EntryType::Block),
            E::Dev("dev/mem", EntryType::Char),
            E::FileMode("bin/su", b"elf", 0o4755),
            E::Dir("tmp", 0o1777),
            E::Dir("ww", 0o777),
            E::Fifo("run/fifo"),
        ])
        .unwrap();
    assert_eq!(st.skipped_devices, 2);
    assert!(!s.layer.join("dev/sda").exists() && !s.layer.join("dev/mem").exists());
    let mode = |p: &str| fs::symlink_metadata(s.layer.join(p)).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode("bin/su"), 0o4755);
    assert_eq!(mode("tmp"), 0o1777);
    assert_eq!(mode("ww"), 0o777);
    assert!(fs::symlink_metadata(s.layer.join("run/fifo")).unwrap().file_type().is_fifo());
    s.assert_outside_untouched();
}

#[test]
fn u8_decompression_bomb_is_capped() {
    // 16 MiB of zeros gzips to ~16 KiB; the cap is on the decompressed stream.
    let mut b = tar::Builder::new(Vec::new());
    let mut h = Header::new_gnu();
    h.set_size(16 << 20);
    h.set_mode(0o644);
    h.set_entry_type(EntryType::Regular);
    b.append_data(&mut h, "zeros", std::io::repeat(0).take_compat(16 << 20)).unwrap();
    let tar = b.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    let blob = gz.finish().unwrap();
    assert!(blob.len() < 1 << 20);
    let s = scene();
    let limits = Limits { max_bytes: 4 << 20, ..Limits::default() };
    let err = unpack_blob(&blob[..], &s.layer, None, &limits).unwrap_err();
    assert!(matches!(err, UnpackError::TooLarge { limit } if limit == 4 << 20), "{err}: {:?}", std::error::Error::source(&err));
    assert!(err.to_string().contains("Limits::max_bytes"));
    // under a big enough cap the same blob unpacks
    let s = scene();
    let st = unpack_blob(&blob[..], &s.layer, None, &Limits::default()).unwrap();
    assert_eq!(fs::metadata(s.layer.join("zeros")).unwrap().len(), 16 << 20);
    assert_eq!(st.tar_bytes, tar.len() as u64);
}

trait TakeCompat: std::io::Read + Sized {
    fn take_compat(self, n: u64) -> std::io::Take<Self> {
        std::io::Read::take(self, n)
    }
}
impl<R: std::io::Read> TakeCompat for R {}

#[test]
fn u8_entry_flood_and_depth_are_capped() {
    let names: Vec<String> = (0..1001).map(|i| format!("f{i}")).collect();
    let entries: Vec<E<'_>> = names.iter().map(|n| E::File(n, b"")).collect();
    let s = scene();
    let limits = Limits { max_entries: 1000, ..Limits::default() };
    let err = unpack_tar(&tar_of(&entries)[..], &s.layer, None, &limits).unwrap_err();
    assert!(matches!(err, UnpackError::TooManyEntries { limit: 1000 }), "{err}");

    // depth 10,000 (a GNU long name of 20,000 bytes)
    let deep = "a/".repeat(10_000) + "f";
    let mut b = tar::Builder::new(Vec::new());
    let mut h = Header::new_gnu();
    h.set_size(0);
    h.set_entry_type(EntryType::Regular);
    b.append_data(&mut h, &deep, &b""[..]).unwrap();
    let tar = b.into_inner().unwrap();
    let s = scene();
    let err = unpack_tar(&tar[..], &s.layer, None, &Limits::default()).unwrap_err();
    assert!(matches!(err, UnpackError::PathTooLong { .. }), "{err}");
    let s = scene();
    let err = unpack_tar(&tar[..], &s.layer, None, &Limits { max_path_len: 1 << 20, ..Limits::default() }).unwrap_err();
    assert!(matches!(err, UnpackError::TooDeep { limit: 256, .. }), "{err}");
    assert!(fs::read_dir(&s.layer).unwrap().count() <= 1);
}

#[test]
fn u9_diff_id_mismatch_is_an_error() {
    let tar = tar_of(&[E::File("a", b"1")]);
    let good = Digest::of(&tar);
    let s = scene();
    let st = unpack_tar(&tar[..], &s.layer, Some(&good), &Limits::default()).unwrap();
    assert_eq!(st.diff_id, good);
    let mut bad = tar.clone();
    bad[600] ^= 1; // a byte of the file's data block... inside the padding after "1"
    let s = scene();
    let err = unpack_tar(&bad[..], &s.layer, Some(&good), &Limits::default()).unwrap_err();
    assert!(matches!(err, UnpackError::DiffIdMismatch { .. }), "{err}");
    assert!(err.to_string().contains("tampered"));
}

#[test]
fn later_entries_replace_earlier_ones() {
    let s = scene();
    s.unpack(&[
        E::File("x", b"file"),
        E::Dir("x", 0o755),
        E::File("x/in", b"1"),
        E::File("y/deep/f", b"1"),
        E::File("y", b"now a file"),
        E::Symlink("z", "x"),
        E::File("z", b"plain"),
    ])
    .unwrap();
    assert!(s.layer.join("x/in").is_file());
    assert_eq!(fs::read(s.layer.join("y")).unwrap(), b"now a file");
    assert!(fs::symlink_metadata(s.layer.join("z")).unwrap().is_file());
    assert_eq!(fs::read(s.layer.join("x/in")).unwrap(), b"1");
}

#[test]
fn gzip_zstd_and_plain_layers_unpack_alike() {
    let tar = tar_of(&[E::File("etc/os-release", b"ID=test"), E::Symlink("bin/sh", "busybox")]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar).unwrap();
    let gz = gz.finish().unwrap();
    let zst = zstd::stream::encode_all(&tar[..], 3).unwrap();
    for (what, blob) in [("plain", tar.clone()), ("gzip", gz), ("zstd", zst)] {
        let s = scene();
        let st = unpack_blob(&blob[..], &s.layer, Some(&Digest::of(&tar)), &Limits::default()).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(st.diff_id, Digest::of(&tar), "{what}");
        assert_eq!(fs::read(s.layer.join("etc/os-release")).unwrap(), b"ID=test", "{what}");
    }
    // a zstd bomb is capped like a gzip one
    let zeros = zstd::stream::encode_all(std::io::repeat(0).take_compat(16 << 20), 3).unwrap();
    let s = scene();
    let err = unpack_blob(&zeros[..], &s.layer, None, &Limits { max_bytes: 1 << 20, ..Limits::default() }).unwrap_err();
    assert!(matches!(err, UnpackError::TooLarge { .. }), "{err}");
}

#[test]
fn chains_of_dangling_symlinks_stay_confined_and_bounded() {
    // l0 -> d/d/.../d/l1 (100 deep), l1 -> ... -> l59: each hop goes deeper, never outside.
    let deep = "d/".repeat(100);
    let names: Vec<(String, String)> = (0..60).map(|i| (format!("{deep}l{i}"), format!("/{deep}l{}", i + 1))).collect();
    let mut entries: Vec<E<'_>> = vec![E::Symlink("l0", &names[0].1)];
    for (n, t) in names.iter().skip(1) {
        entries.push(E::Symlink(n, t));
    }
    entries.push(E::File("l0/pwn", b"x"));
    let s = scene();
    // Run in a thread with a small stack: the walk must not recurse per hop or component.
    let layer = s.layer.clone();
    let tar = tar_of_long(&entries);
    let res = std::thread::Builder::new()
        .stack_size(256 << 10)
        .spawn(move || unpack_tar(&tar[..], &layer, None, &Limits::default()).map(|_| ()))
        .unwrap()
        .join()
        .expect("no stack overflow");
    let err = res.unwrap_err();
    assert!(err.to_string().contains("symlink loop") || matches!(err, UnpackError::Fs { .. }), "{err}");
    s.assert_outside_untouched();
}

/// Like `tar_of`, but through the builder's GNU long-name support (names over 100 bytes);
/// only for names without `..`, which the builder refuses.
fn tar_of_long(entries: &[E<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = Header::new_gnu();
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        match *e {
            E::Symlink(n, t) => {
                h.set_entry_type(EntryType::Symlink);
                h.set_size(0);
                h.set_mode(0o777);
                b.append_link(&mut h, n, t).unwrap();
            }
            E::File(n, d) => {
                h.set_entry_type(EntryType::Regular);
                h.set_size(d.len() as u64);
                h.set_mode(0o644);
                b.append_data(&mut h, n, d).unwrap();
            }
            _ => unimplemented!(),
        }
    }
    b.into_inner().unwrap()
}

#[test]
fn u8_huge_long_names_and_pax_records_are_capped_before_memory() {
    // A GNU long-name member ('L') or a PAX record set ('x') of 8 MiB: the tar crate would
    // read it into memory whole; the metadata cap (4 MiB by default) stops it first.
    for kind in [EntryType::GNULongName, EntryType::XHeader] {
        let mut b = tar::Builder::new(Vec::new());
        let data = if kind == EntryType::XHeader {
            let value = "a".repeat(8 << 20);
            let rec = format!("path={value}\n");
            let len = rec.len() + 1 + (rec.len() + 9).to_string().len();
            format!("{len} {rec}").into_bytes()
        } else {
            vec![b'a'; 8 << 20]
        };
        let mut h = header("././@LongLink", kind, data.len() as u64, "", 0o644);
        h.set_cksum();
        b.append(&h, &data[..]).unwrap();
        b.append(&header("f", EntryType::Regular, 0, "", 0o644), &b""[..]).unwrap();
        let tar = b.into_inner().unwrap();
        let s = scene();
        let err = unpack_tar(&tar[..], &s.layer, None, &Limits::default()).unwrap_err();
        assert!(matches!(err, UnpackError::MetadataTooLarge { limit } if limit == 4 << 20), "{kind:?}: {err}");
        assert!(err.to_string().contains("Limits::max_metadata"));
    }
    // ordinary long names pass
    let name = "d/".repeat(100) + "file";
    let s = scene();
    unpack_tar(&tar_of_long(&[E::File(&name, b"ok")])[..], &s.layer, None, &Limits::default()).unwrap();
    assert_eq!(fs::read(s.layer.join(&name)).unwrap(), b"ok");
}
