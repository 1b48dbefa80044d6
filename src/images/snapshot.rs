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
            image_id: self.image_id.clone(),
            lease: lease(root, &self.id)?,
        })
    }
}

/// A shared flock on the snapshot's lease file.
pub fn lease(root: &Path, id: &str) -> Result<OwnedFd> {
    let f = File::open(Snapshot::path(root, id).join("lease")).map_err(io("opening a snapshot's lease"))?;
    crate::sys::flock(f.as_fd(), libc::LOCK_SH).map_err(io("taking a snapshot's lease"))?;
    Ok(OwnedFd::from(f))
}

/// The snapshot a tag names, if it names one.
pub fn find(root: &Path, tag: &str) -> Result<Option<Snapshot>> {
    let Ok(id) = fs::read_to_string(tag_file(root, tag)) else { return Ok(None) };
    Ok(Snapshot::read(root, id.trim()))
}

/// Freezes `upper` (a sandbox's current upper directory, on the state
/// root's filesystem) into a new snapshot over `below` (bottom to top).
/// Returns the snapshot and a lease on it.
pub fn freeze(root: &Path, upper: &Path, mut snap: Snapshot, tag: Option<&str>) -> Result<(Snapshot, OwnedFd)> {
    let path = Snapshot::path(root, &snap.id);
    fs::create_dir_all(dir(root).join("tags")).map_err(io("creating the snapshot directory"))?;
    fs::create_dir(&path).map_err(io("creating the snapshot directory"))?;
    OpenOptions::new().create(true).write(true).truncate(false).open(path.join("lease")).map_err(io("creating a snapshot's lease"))?;
    let layer = path.join("layer");
    // The one step that "copies" the sandbox's files: a rename.
    fs::rename(upper, &layer).map_err(|e| {
        let _ = fs::remove_dir_all(&path);
        io("moving the upper layer into the snapshot")(e)
    })?;
    snap.layers.push(layer);
    let tmp = path.join(".snapshot.json.tmp");
    fs::write(&tmp, serde_json::to_vec_pretty(&snap).unwrap_or_default()).map_err(io("writing snapshot.json"))?;
    fs::rename(&tmp, path.join("snapshot.json")).map_err(io("writing snapshot.json"))?;
    let lease = lease(root, &snap.id)?;
    if let Some(tag) = tag {
        set_tag(root, tag, &snap.id)?;
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
    let tmp = file.with_extension(format!("tmp{}", std::process::id()));
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
        .map(|d| d.flatten().filter_map(|e| fs::read_to_string(e.path()).ok()).map(|s| s.trim().to_string()).collect())
        .unwrap_or_default();
    let mut keep = Vec::new();
    for e in fs::read_dir(dir(root)).into_iter().flatten().flatten() {
        let id = e.file_name().to_string_lossy().into_owned();
        if id == "tags" {
            continue;
        }
        let snap = Snapshot::read(root, &id);
        let in_use = tagged.contains(&id)
            || File::open(e.path().join("lease"))
                .map(|f| crate::sys::flock(f.as_fd(), libc::LOCK_EX | libc::LOCK_NB).is_err())
                .unwrap_or(false);
        // A snapshot another snapshot stands on stays with it.
        let needed = list_layers(root).iter().any(|(other, layers)| other != &id && layers.iter().any(|l| l.starts_with(e.path())));
        if in_use || needed {
            keep.extend(snap.and_then(|s| s.image_id));
        } else if fs::remove_dir_all(e.path()).is_ok() {
            removed += 1;
        }
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
