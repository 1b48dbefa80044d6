//! Snapshots: a sandbox's filesystem turned into an image without copying
//! anything.
//!
//! A sandbox's upper directory already is a layer in the overlayfs format
//! (whiteouts, opaque directories). A snapshot freezes it: the directory
//! is renamed into `<root>/.images/snapshots/<id>/layer` (same filesystem,
//! one rename), and the sandbox goes on from the same files on a fresh
//! upper layer stacked over the frozen one (a generation swap, like a
//! reset: its processes restart). Sandboxes made from the snapshot stack
//! the same frozen layer over the same image layers.
//!
//! `<id>/snapshot.json` lists the layers (bottom to top) and the config;
//! `tags/<tag>` names a snapshot; `<id>/lease` is flocked shared by every
//! sandbox standing on it (their PID 1 holds the fd), so [`collect`]
//! removes only snapshots that are untagged and unused.

use std::fs::{self, File, OpenOptions};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::Resolved;
use crate::error::{Error, Result};

/// `<root>/.images/snapshots`.
pub fn dir(root: &Path) -> PathBuf {
    super::store_dir(root).join("snapshots")
}

/// `snapshot.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshot {
    pub id: String,
    /// Layer directories, bottom to top; the last is this snapshot's own.
    pub layers: Vec<PathBuf>,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<String>,
    pub command: Vec<String>,
    /// The user the sandbox ran as (`USER[:GROUP]`; `None`: root):
    /// sandboxes made from the snapshot run as it too unless told otherwise.
    #[serde(default)]
    pub user: Option<String>,
    /// The store image the layers below come from, kept from the store's
    /// garbage collection while this snapshot exists.
    pub image_id: Option<String>,
    /// The sandbox it was taken from.
    pub source: String,
    /// Unix time.
    pub created: u64,
}

fn io(step: &'static str) -> impl Fn(std::io::Error) -> Error {
    move |source| Error::Io { step, name: String::new(), source }
}

/// A tag as a file name: references hold '/' and ':'.
fn tag_file(root: &Path, tag: &str) -> PathBuf {
    let safe: String = tag.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') { c } else { '+' }).collect();
    dir(root).join("tags").join(format!("{safe}-{:08x}", fnv(tag)))
}

fn fnv(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
}

impl Snapshot {
    fn path(root: &Path, id: &str) -> PathBuf {
        dir(root).join(id)
    }

    fn read(root: &Path, id: &str) -> Option<Snapshot> {
        serde_json::from_slice(&fs::read(Self::path(root, id).join("snapshot.json")).ok()?).ok()
    }

    /// The snapshot's layers and config, with a lease taken.
    pub fn resolved(&self, root: &Path) -> Result<Resolved> {
        Ok(Resolved {
            layers: self.layers.clone(),
            env: self.env.clone(),
            working_dir: self.working_dir.clone(),
            command: self.command.clone(),
            user: self.user.clone(),
            image_id: self.image_id.clone(),
            lease: lease(root, &self.id)?,
        })
    }
}

/// A shared flock on the snapshot's lease file.
pub fn lease(root: &Path, id: &str) -> Result<OwnedFd> {
    let path = Snapshot::path(root, id);
    let f = File::open(path.join("lease")).map_err(io("opening a snapshot's lease"))?;
    crate::sys::flock(f.as_fd(), libc::LOCK_SH).map_err(io("taking a snapshot's lease"))?;
    // The collector deletes a snapshot only while it holds the lease
    // exclusively; one it deleted between our open and our flock has no
    // snapshot.json any more.
    if !path.join("snapshot.json").is_file() {
        return Err(Error::Image { spec: id.to_string(), message: "the snapshot was removed".into() });
    }
    Ok(OwnedFd::from(f))
}

/// The snapshot a tag names, if it names one.
pub fn find(root: &Path, tag: &str) -> Result<Option<Snapshot>> {
    let Ok(id) = fs::read_to_string(tag_file(root, tag)) else { return Ok(None) };
    // A tag whose snapshot cannot be read must not fall through to a
    // registry image of the same name.
    Snapshot::read(root, id.trim())
        .map(Some)
        .ok_or_else(|| Error::Image { spec: tag.to_string(), message: format!("it names snapshot {} which cannot be read", id.trim()) })
}

/// Freezes `upper` (a sandbox's current upper directory, on the state
/// root's filesystem) into a new snapshot over `below` (bottom to top).
/// Returns the snapshot and a lease on it.
pub fn freeze(root: &Path, upper: &Path, mut snap: Snapshot, tag: Option<&str>) -> Result<(Snapshot, OwnedFd)> {
    // Built under a dot-name with its lease held from the start, then
    // published by rename: the collector never sees a half-made snapshot
    // without a lease (it would take the sandbox's live upper layer along).
    let path = Snapshot::path(root, &snap.id);
    let staging = dir(root).join(format!(".new-{}", snap.id));
    let private = |p: &Path| fs::DirBuilder::new().recursive(true).mode(0o700).create(p);
    private(&dir(root).join("tags")).map_err(io("creating the snapshot directory"))?;
    private(&staging).map_err(io("creating the snapshot directory"))?;
    let lease = OpenOptions::new()
        .create(true)
        .read(true)
        .write(true)
        .truncate(false)
        .open(staging.join("lease"))
        .and_then(|f| crate::sys::flock(f.as_fd(), libc::LOCK_SH).map(|()| OwnedFd::from(f)));
    let lease = match lease {
        Ok(l) => l,
        Err(e) => {
            let _ = fs::remove_dir_all(&staging);
            return Err(io("creating a snapshot's lease")(e));
        }
    };
    // The one step that "copies" the sandbox's files: a rename.
    if let Err(e) = fs::rename(upper, staging.join("layer")) {
        let _ = fs::remove_dir_all(&staging);
        return Err(io("moving the upper layer into the snapshot")(e));
    }
    snap.layers.push(path.join("layer"));
    let published = (|| -> std::io::Result<()> {
        let tmp = staging.join(".snapshot.json.tmp");
        fs::write(&tmp, serde_json::to_vec_pretty(&snap).unwrap_or_default())?;
        fs::rename(&tmp, staging.join("snapshot.json"))?;
        fs::rename(&staging, &path)
    })();
    if let Err(e) = published {
        // Give the sandbox its upper layer back, wherever it is now.
        let _ = fs::rename(staging.join("layer"), upper).or_else(|_| fs::rename(path.join("layer"), upper));
        let _ = fs::remove_dir_all(&staging);
        let _ = fs::remove_dir_all(&path);
        return Err(io("writing snapshot.json")(e));
    }
    if let Some(tag) = tag {
        if let Err(e) = set_tag(root, tag, &snap.id) {
            thaw(root, &snap.id, upper, Some(tag));
            return Err(e);
        }
    }
    Ok((snap, lease))
}

/// Undoes [`freeze`] when the sandbox could not move on: its upper layer
/// goes back where it was, the tag and the snapshot go.
pub fn thaw(root: &Path, id: &str, upper: &Path, tag: Option<&str>) {
    let path = Snapshot::path(root, id);
    let _ = fs::rename(path.join("layer"), upper);
    if let Some(tag) = tag {
        if fs::read_to_string(tag_file(root, tag)).is_ok_and(|t| t.trim() == id) {
            let _ = untag(root, tag);
        }
    }
    let _ = fs::remove_dir_all(path);
}

/// Points `tag` at snapshot `id` (atomically; an old target loses the tag).
pub fn set_tag(root: &Path, tag: &str, id: &str) -> Result<()> {
    let file = tag_file(root, tag);
    let tmp = dir(root).join("tags").join(format!(".tmp-{}-{}", std::process::id(), &crate::agent::shell::new_nonce()[..8]));
    fs::write(&tmp, id).map_err(io("writing a snapshot tag"))?;
    fs::rename(&tmp, &file).map_err(io("writing a snapshot tag"))
}

/// Removes `tag` if it names a snapshot; false if it does not.
pub fn untag(root: &Path, tag: &str) -> Result<bool> {
    match fs::remove_file(tag_file(root, tag)) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io("removing a snapshot tag")(e)),
    }
}

/// Every snapshot with its tags.
pub fn list(root: &Path) -> Vec<(Snapshot, Vec<String>)> {
    let tags: Vec<(String, String)> = fs::read_dir(dir(root).join("tags"))
        .map(|d| {
            d.flatten()
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .filter_map(|e| Some((e.file_name().to_string_lossy().into_owned(), fs::read_to_string(e.path()).ok()?.trim().to_string())))
                .collect()
        })
        .unwrap_or_default();
    let mut out = Vec::new();
    for e in fs::read_dir(dir(root)).into_iter().flatten().flatten() {
        let id = e.file_name().to_string_lossy().into_owned();
        if let Some(s) = Snapshot::read(root, &id) {
            let mine = tags
                .iter()
                .filter(|(_, t)| *t == id)
                .map(|(n, _)| n.rsplit_once('-').map_or(n.as_str(), |(a, _)| a).replace('+', "/"))
                .collect();
            out.push((s, mine));
        }
    }
    out
}

/// Removes every snapshot that no tag names and no sandbox stands on, and
/// returns the store images the remaining ones need.
pub fn collect(root: &Path) -> Result<Vec<String>> {
    // A snapshot that only a removable one stands on becomes removable in
    // turn: repeat until a pass removes nothing.
    loop {
        let (keep, removed) = collect_pass(root)?;
        if removed == 0 {
            return Ok(keep);
        }
    }
}

/// One pass of [`collect`]: what to keep, and how many were removed.
fn collect_pass(root: &Path) -> Result<(Vec<String>, usize)> {
    let mut removed = 0;
    let tagged: Vec<String> = fs::read_dir(dir(root).join("tags"))
        .map(|d| {
            d.flatten()
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .filter_map(|e| fs::read_to_string(e.path()).ok())
                .map(|s| s.trim().to_string())
                .collect()
        })
        .unwrap_or_default();
    let layers = list_layers(root);
    let mut keep = Vec::new();
    for e in fs::read_dir(dir(root)).into_iter().flatten().flatten() {
        let id = e.file_name().to_string_lossy().into_owned();
        if id == "tags" {
            continue;
        }
        // The lease, held exclusively while we decide and delete: nobody
        // can take it meanwhile, and `lease()` refuses a snapshot whose
        // directory went.
        let probe = File::open(e.path().join("lease"));
        let free = probe.as_ref().is_ok_and(|f| crate::sys::flock(f.as_fd(), libc::LOCK_EX | libc::LOCK_NB).is_ok());
        if id.starts_with('.') {
            // Being built (held by its builder), or left by a dead one.
            if free && fs::remove_dir_all(e.path()).is_ok() {
                removed += 1;
            }
            continue;
        }
        let snap = Snapshot::read(root, &id);
        // A snapshot another snapshot stands on stays with it.
        let needed = layers
            .iter()
            .any(|(other, ls)| other != &id && ls.iter().any(|l| l.parent().and_then(Path::file_name) == Some(std::ffi::OsStr::new(&id))));
        if tagged.contains(&id) || !free || needed {
            keep.extend(snap.and_then(|s| s.image_id));
            continue;
        }
        let doomed = dir(root).join(format!(".doomed-{id}"));
        if fs::rename(e.path(), &doomed).is_ok() && fs::remove_dir_all(&doomed).is_ok() {
            removed += 1;
        }
        drop(probe);
    }
    Ok((keep, removed))
}

fn list_layers(root: &Path) -> Vec<(String, Vec<PathBuf>)> {
    fs::read_dir(dir(root))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let id = e.file_name().to_string_lossy().into_owned();
            Snapshot::read(root, &id).map(|s| (id, s.layers))
        })
        .collect()
}
