//! Garbage collection: what crashed processes left behind.
//!
//! Every envbox start runs it. A sandbox directory whose lock can be taken
//! has no live agent (and no creator at work), so its cgroups and
//! directories are removed. A cgroup of this state root that no live sandbox
//! names is an orphan: its processes (ours, by construction) are killed and
//! it is removed. Nothing outside `<root>` and our own cgroup prefix is
//! touched (SECURITY.md L5).

use std::path::Path;

use super::state::{self, State, CLAIMING_PREFIX, CREATING_PREFIX, TRASH_DIR};
use super::{cgroup_layout, delete, root_tag, CGROUP_PARENT};
use crate::cgroup::Cgroup;
use crate::config::validate_name;
use crate::error::{Error, Result};

/// What one collection removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Report {
    /// Dead sandboxes whose leftovers were removed.
    pub sandboxes: Vec<String>,
    /// Orphan cgroups removed.
    pub cgroups: Vec<String>,
}

/// Collects the garbage under `root`.
pub fn collect(root: &Path) -> Result<Report> {
    let mut report = Report::default();
    let entries = match std::fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(report),
        Err(source) => return Err(Error::StateRoot { path: root.to_path_buf(), source }),
    };
    // Snapshot the cgroups first: a cgroup that exists now had its
    // state.json written before it, so any live owner shows up below.
    let layout = cgroup_layout().ok();
    let prefix = format!("{}-", root_tag(root));
    let cgroups = layout.map(|l| Cgroup::list(l, CGROUP_PARENT, &prefix)).unwrap_or_default();
    let mut live_ids = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if name == TRASH_DIR {
            if let Ok(items) = std::fs::read_dir(&path) {
                for item in items.flatten() {
                    let _ = std::fs::remove_dir_all(item.path());
                }
            }
            continue;
        }
        if let Some(rest) = name.strip_prefix(CLAIMING_PREFIX) {
            // Left by a create that died between mkdir and rename (it holds
            // nothing but a lock file). The name says who claimed it: gone
            // only when that process is (same pid, same start time), or,
            // for names without it, when it is a minute old.
            let mut parts = rest.splitn(3, '-');
            let owner = match (parts.next().and_then(|p| p.parse::<i32>().ok()), parts.next().and_then(|s| s.parse::<u64>().ok())) {
                (Some(pid), Some(start)) if parts.next().is_some() => Some((pid, start)),
                _ => None,
            };
            let dead = match owner {
                Some((pid, start)) => state::process_start_time(pid) != Some(start),
                None => std::fs::symlink_metadata(&path)
                    .ok()
                    .and_then(|m| m.modified().ok())
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > std::time::Duration::from_secs(60)),
            };
            if dead && matches!(state::try_lock(&path), Ok(Some(_))) {
                let _ = std::fs::remove_dir_all(&path);
            }
            continue;
        }
        let creating = name.starts_with(CREATING_PREFIX);
        if !creating && validate_name(&name).is_err() {
            continue; // .images and anything that is not ours
        }
        // A sandbox directory is published only with its lock file in it
        // (state::claim_dir): a directory (or a symlink) without one is
        // someone else's, whatever its name (SECURITY.md L5).
        let real_dir = std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir());
        if !real_dir || (!creating && !path.join(state::LOCK_FILE).is_file()) {
            continue;
        }
        let st = State::read(&path).ok();
        match state::try_lock(&path) {
            Ok(Some(_lock)) => {
                delete::remove_leftovers(root, &path, st.as_ref(), delete::Wait::Sync)?;
                if !creating {
                    report.sandboxes.push(name);
                }
            }
            // Alive, or being created or deleted right now.
            Ok(None) => live_ids.extend(st.map(|s| s.id)),
            Err(_) => {}
        }
    }
    if let Some(layout) = layout {
        for id in cgroups.into_iter().filter(|id| !live_ids.contains(id)) {
            if let Ok(cg) = Cgroup::open(layout, CGROUP_PARENT, &id) {
                if cg.kill_all().and_then(|()| cg.remove()).is_ok() {
                    report.cgroups.push(id);
                }
            }
        }
    }
    Ok(report)
}
