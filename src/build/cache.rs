//! The build cache: which image a build step made, by the hash of the step and everything
//! before it (the base image id, the instructions as expanded, the content of copied
//! files, the build arguments in scope).
//!
//! `<root>/.images/build-cache/<key>.json` = `{"image": <step image id>, "used_by": [final
//! image ids]}`. A step image is untagged; it stays in the store while the cache keeps it,
//! and the cache keeps an entry while some image built through it is still tagged (see
//! [`keep`]). `envbox rmi` of the last such image lets garbage collection take it all.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use envbox_rootfs::Digest;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    image: Digest,
    #[serde(default)]
    used_by: BTreeSet<Digest>,
}

pub fn dir(root: &Path) -> PathBuf {
    crate::images::store_dir(root).join("build-cache")
}

fn path(root: &Path, key: &Digest) -> PathBuf {
    dir(root).join(format!("{}.json", key.hex()))
}

fn read(p: &Path) -> Option<Entry> {
    serde_json::from_slice(&fs::read(p).ok()?).ok()
}

fn write(p: &Path, e: &Entry) -> std::io::Result<()> {
    let tmp = p.with_extension(format!("tmp-{}", std::process::id()));
    let mut f = fs::File::create(&tmp)?;
    f.write_all(&serde_json::to_vec(e).expect("entry serialises"))?;
    drop(f);
    fs::rename(&tmp, p)
}

/// The image a step with this key made, if cached.
pub fn get(root: &Path, key: &Digest) -> Option<Digest> {
    read(&path(root, key)).map(|e| e.image)
}

/// Records what a step made.
pub fn put(root: &Path, key: &Digest, image: &Digest) -> std::io::Result<()> {
    fs::create_dir_all(dir(root))?;
    let p = path(root, key);
    let used_by = read(&p).map(|e| e.used_by).unwrap_or_default();
    write(&p, &Entry { image: image.clone(), used_by })
}

/// Records that the final image `image` was built through the steps `keys`.
pub fn mark_used(root: &Path, keys: &[Digest], image: &Digest) -> std::io::Result<()> {
    for key in keys {
        let p = path(root, key);
        if let Some(mut e) = read(&p) {
            if e.used_by.insert(image.clone()) {
                write(&p, &e)?;
            }
        }
    }
    Ok(())
}

/// The step images to keep, given the ids of the tagged images; entries no tagged image
/// was built through are removed (the store's gc then takes their images).
pub fn keep(root: &Path, tagged: &BTreeSet<Digest>) -> Vec<Digest> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir(dir(root)) else { return out };
    for e in rd.flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".json") {
            // a temp file of a writer that died
            if name.contains(".tmp-") && is_stale(&name) {
                let _ = fs::remove_file(&p);
            }
            continue;
        }
        match read(&p) {
            Some(entry) if entry.used_by.iter().any(|id| tagged.contains(id)) => out.push(entry.image),
            // Written by a build still running (no final image yet): keep for now.
            Some(entry) if entry.used_by.is_empty() && recent(&p) => out.push(entry.image),
            _ => {
                let _ = fs::remove_file(&p);
            }
        }
    }
    out
}

fn is_stale(name: &str) -> bool {
    let pid = name.rsplit("tmp-").next().and_then(|p| p.parse::<i32>().ok());
    !pid.is_some_and(super::alive)
}

/// Less than a day old: a build that is still running (or was interrupted recently).
fn recent(p: &Path) -> bool {
    fs::metadata(p).and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok()).is_some_and(|age| age.as_secs() < 86_400)
}
