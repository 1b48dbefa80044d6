//! Writing a layer directory back out as a layer tar: the reverse of [`crate::unpack`].
//!
//! A layer directory is in the overlayfs format (a sandbox's upper directory, or a layer the
//! store unpacked); the tar is in the image-spec format:
//!
//! - a 0:0 character device `dir/NAME` (an overlayfs whiteout) becomes an empty `dir/.wh.NAME`;
//! - a directory with `trusted.overlay.opaque=y` gets a `dir/.wh..wh..opq` entry after it;
//! - files sharing an inode become one file and hardlinks to it;
//! - of a regular file's xattrs, `security.capability` and `user.*` are written as PAX `SCHILY.xattr.*`
//!   records (the ones [`crate::unpack`] applies); `trusted.*` (overlay metadata) never is;
//! - other character and block devices and sockets are left out (the unpacker never creates
//!   them either) and counted.
//!
//! The output is deterministic: entries sorted by name bytes, GNU headers without user or
//! group names, only mode bits, owner, size and the mtime in seconds. So writing the same
//! tree twice gives the same bytes, and so the same diff_id.
//!
//! Nothing is followed: names are read with `lstat`, files opened with `O_NOFOLLOW`. The tree
//! must not change while it is written (a build stops the sandbox first).

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use tar::{EntryType, Header};

use crate::unpack::OPAQUE_XATTR;

/// What [`write_layer_tar`] wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LayerTarStats {
    /// Entries written (whiteouts, opaque markers and directories included).
    pub entries: u64,
    pub whiteouts: u64,
    pub opaque_dirs: u64,
    /// Devices and sockets left out.
    pub skipped: u64,
}

impl LayerTarStats {
    /// True when the layer holds no change at all (a build step that changed nothing).
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }
}

fn with_path(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// Writes the layer directory `dir` to `out` as an uncompressed layer tar (see the module
/// docs). The root directory itself is not an entry.
pub fn write_layer_tar<W: Write>(dir: &Path, out: W) -> io::Result<LayerTarStats> {
    let mut w = Writer { tar: tar::Builder::new(out), stats: LayerTarStats::default(), inodes: HashMap::new() };
    w.tar.follow_symlinks(false);
    w.dir(dir, &PathBuf::new())?;
    w.tar.into_inner()?.flush()?;
    Ok(w.stats)
}

struct Writer<W: Write> {
    tar: tar::Builder<W>,
    stats: LayerTarStats,
    /// (dev, ino) of multiply-linked files already written → their name in the tar.
    inodes: HashMap<(u64, u64), PathBuf>,
}

fn header(kind: EntryType, md: &fs::Metadata) -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(md.mode() & 0o7777);
    h.set_uid(u64::from(md.uid()));
    h.set_gid(u64::from(md.gid()));
    h.set_mtime(u64::try_from(md.mtime()).unwrap_or(0));
    h.set_size(0);
    h
}

/// An empty regular file header for the `.wh.` markers: no owner, mode or time.
fn marker_header() -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(EntryType::Regular);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(0);
    h
}

/// One PAX record: `"<len> <key>=<value>\n"`, where `<len>` counts the whole record.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    let mut rec = format!("{len} {key}=").into_bytes();
    rec.extend_from_slice(value);
    rec.push(b'\n');
    rec
}

/// The xattrs the unpacker applies, sorted by name.
fn wanted_xattrs(path: &Path) -> io::Result<Vec<(String, Vec<u8>)>> {
    // Grown on ERANGE: a file may have more names than one page holds.
    let mut names = vec![0u8; 4096];
    let n = loop {
        match rustix::fs::llistxattr(path, &mut names[..]) {
            Ok(n) => break n,
            Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
            Err(rustix::io::Errno::RANGE) if names.len() < (1 << 20) => names.resize(names.len() * 4, 0),
            Err(e) => return Err(with_path(path, e.into())),
        }
    };
    let mut out = Vec::new();
    for name in names[..n].split(|b| *b == 0).filter(|s| !s.is_empty()) {
        let Ok(name) = std::str::from_utf8(name) else { continue };
        if name != "security.capability" && !name.starts_with("user.") {
            continue;
        }
        let mut value = vec![0u8; 65536];
        let len = rustix::fs::lgetxattr(path, name, &mut value).map_err(|e| with_path(path, e.into()))?;
        value.truncate(len);
        out.push((name.to_owned(), value));
    }
    out.sort();
    Ok(out)
}

/// Overlay metadata that a plain layer cannot express: a redirected directory or a
/// metacopy file (data elsewhere). Writing such an entry would silently corrupt the layer.
fn refuse_overlay_metadata(path: &Path) -> io::Result<()> {
    let mut buf = [0u8; 256];
    for x in ["trusted.overlay.redirect", "trusted.overlay.metacopy"] {
        if rustix::fs::lgetxattr(path, x, &mut buf).is_ok() {
            return Err(with_path(
                path,
                io::Error::other(format!("has {x}: the overlay was mounted with redirect_dir or metacopy, so this is not a plain layer")),
            ));
        }
    }
    Ok(())
}

fn is_opaque(path: &Path) -> bool {
    let mut buf = [0u8; 4];
    matches!(rustix::fs::lgetxattr(path, OPAQUE_XATTR, &mut buf), Ok(1) if buf[0] == b'y')
}

impl<W: Write> Writer<W> {
    fn dir(&mut self, host: &Path, name: &Path) -> io::Result<()> {
        let mut entries: Vec<OsString> =
            fs::read_dir(host).map_err(|e| with_path(host, e))?.map(|e| e.map(|e| e.file_name())).collect::<io::Result<_>>()?;
        entries.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for child in entries {
            self.entry(&host.join(&child), &name.join(&child), &child)?;
        }
        Ok(())
    }

    fn entry(&mut self, host: &Path, name: &Path, base: &OsString) -> io::Result<()> {
        let md = fs::symlink_metadata(host).map_err(|e| with_path(host, e))?;
        let ft = md.file_type();
        if ft.is_dir() || ft.is_file() {
            refuse_overlay_metadata(host)?;
        }
        if ft.is_char_device() && md.rdev() == 0 {
            let mut wh = OsString::from(".wh.").into_vec();
            wh.extend_from_slice(base.as_bytes());
            let path = name.with_file_name(OsString::from_vec(wh));
            self.tar.append_data(&mut marker_header(), path, io::empty())?;
            self.stats.entries += 1;
            self.stats.whiteouts += 1;
            return Ok(());
        }
        if ft.is_dir() {
            let mut h = header(EntryType::Directory, &md);
            self.tar.append_data(&mut h, name, io::empty())?;
            self.stats.entries += 1;
            if is_opaque(host) {
                self.tar.append_data(&mut marker_header(), name.join(".wh..wh..opq"), io::empty())?;
                self.stats.entries += 1;
                self.stats.opaque_dirs += 1;
            }
            return self.dir(host, name);
        }
        if ft.is_symlink() {
            let target = fs::read_link(host).map_err(|e| with_path(host, e))?;
            let mut h = header(EntryType::Symlink, &md);
            self.tar.append_link(&mut h, name, target)?;
            self.stats.entries += 1;
            return Ok(());
        }
        if ft.is_fifo() {
            let mut h = header(EntryType::Fifo, &md);
            self.tar.append_data(&mut h, name, io::empty())?;
            self.stats.entries += 1;
            return Ok(());
        }
        if !ft.is_file() {
            self.stats.skipped += 1;
            return Ok(());
        }
        if md.nlink() > 1 {
            if let Some(first) = self.inodes.get(&(md.dev(), md.ino())) {
                let first = first.clone();
                let mut h = header(EntryType::Link, &md);
                self.tar.append_link(&mut h, name, first)?;
                self.stats.entries += 1;
                return Ok(());
            }
            self.inodes.insert((md.dev(), md.ino()), name.to_path_buf());
        }
        self.xattrs(host)?;
        let mut h = header(EntryType::Regular, &md);
        h.set_size(md.len());
        let f = File::options().read(true).custom_flags(libc_o_nofollow()).open(host).map_err(|e| with_path(host, e))?;
        // A file that shrank under us would make the tar lie about its size: refuse.
        let mut data = f.take(md.len());
        let mut counted = CountingReader { inner: &mut data, n: 0 };
        self.tar.append_data(&mut h, name, &mut counted)?;
        if counted.n != md.len() {
            return Err(with_path(host, io::Error::other("the file changed size while it was archived")));
        }
        self.stats.entries += 1;
        Ok(())
    }

    /// A PAX header with the entry's xattrs, if it has any worth keeping.
    fn xattrs(&mut self, host: &Path) -> io::Result<()> {
        let xattrs = wanted_xattrs(host)?;
        if xattrs.is_empty() {
            return Ok(());
        }
        let mut data = Vec::new();
        for (k, v) in &xattrs {
            data.extend(pax_record(&format!("SCHILY.xattr.{k}"), v));
        }
        let mut h = Header::new_ustar();
        h.set_entry_type(EntryType::XHeader);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_size(data.len() as u64);
        self.tar.append_data(&mut h, "PaxHeaders/xattrs", &data[..])
    }
}

struct CountingReader<'a, R> {
    inner: &'a mut R,
    n: u64,
}

impl<R: Read> Read for CountingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n += n as u64;
        Ok(n)
    }
}

fn libc_o_nofollow() -> i32 {
    // rustix's OFlags share the kernel's values; std wants the raw bits.
    i32::try_from(rustix::fs::OFlags::NOFOLLOW.bits()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_length_counts_itself() {
        let r = pax_record("SCHILY.xattr.user.k", b"v");
        let s = String::from_utf8(r.clone()).unwrap();
        let len: usize = s.split(' ').next().unwrap().parse().unwrap();
        assert_eq!(len, r.len());
        // crossing a digit boundary: 9 + ... → 10 + ...
        for n in 0..200 {
            let v = vec![b'x'; n];
            let r = pax_record("k", &v);
            let len: usize = String::from_utf8_lossy(&r).split(' ').next().unwrap().parse().unwrap();
            assert_eq!(len, r.len(), "value of {n} bytes");
        }
    }
}
