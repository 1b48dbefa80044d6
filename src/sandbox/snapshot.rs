//! `Sandbox::snapshot` and `Sandbox::fork`: a sandbox's filesystem as an
//! image in milliseconds, and sandboxes started from it (see
//! `images::snapshot` for the layout).

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;

use super::state::State;
use super::Sandbox;
use crate::config::{Image, SandboxConfig};
use crate::error::{Error, Result};
use crate::images::snapshot::{self, Snapshot};

fn refuse(name: &str, why: &str) -> Error {
    Error::Image { spec: format!("snapshot of {name}"), message: why.to_string() }
}

impl Sandbox {
    /// Turns the sandbox's current filesystem into an image, named `tag`
    /// when given (`envbox create --image TAG` then starts from it).
    /// Nothing is copied: the upper layer is frozen by a rename and the
    /// sandbox goes on from the same files on a fresh upper layer above it;
    /// like a reset, its processes restart. Returns the snapshot's id.
    pub fn snapshot(&self, tag: Option<&str>) -> Result<String> {
        let io = |step| move |source| Error::Io { step, name: self.name.clone(), source };
        let mut st = State::read(&self.dir).map_err(io("reading state.json"))?;
        if st.overlays.len() != 1 {
            return Err(refuse(&self.name, "snapshots need an image with one layer stack (--image REF or DIR), not the host's system"));
        }
        if st.config.fs == crate::config::FsBackend::Btrfs {
            return Err(refuse(&self.name, "it runs on --fs btrfs; snapshots are made of overlayfs upper layers"));
        }
        if st.config.limits.disk_bytes.is_some() {
            return Err(refuse(&self.name, "its upper layer is a --disk tmpfs, which cannot become an image layer"));
        }
        if let Some(tag) = tag {
            crate::images::check_spec(tag).map_err(|m| Error::Image { spec: tag.to_string(), message: m })?;
        }
        let root = &self.root;
        // What the sandbox sees now: the caller's settings over its image's.
        // What the sandbox runs with, as create recorded it (the image may
        // have been removed since; nothing is resolved again).
        let working_dir = Some(st.workdir.clone()).filter(|w| w.starts_with('/') && w != "/");
        let generation = self.ping()?;
        let upper = self.dir.join("gen").join(&generation).join("u0");
        let below: Vec<PathBuf> = st.snapshot_layers.iter().chain(&st.overlays[0].lowers).rev().cloned().collect();
        let snap = Snapshot {
            id: crate::agent::shell::new_nonce()[..16].to_string(),
            layers: below,
            env: st.env.clone(),
            working_dir,
            command: st.image_command.clone(),
            user: st.user.clone(),
            image_id: st.image_id.clone(),
            source: self.name.clone(),
            created: super::state::now_unix(),
        };
        // Leases on the layers of earlier snapshots since the last reset,
        // before anything moves: the sandbox goes on over all of them.
        let mut leases: Vec<OwnedFd> = Vec::new();
        for layer in &st.snapshot_layers {
            if let Some(id) = layer.parent().and_then(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned()) {
                leases.push(snapshot::lease(root, &id)?);
            }
        }
        let (snap, lease) = snapshot::freeze(root, &upper, snap, tag)?;
        let mut extra = vec![snap.layers.last().cloned().unwrap_or_default()];
        extra.extend(st.snapshot_layers.iter().cloned());
        leases.insert(0, lease);
        let borrowed: Vec<_> = leases.iter().map(AsFd::as_fd).collect();
        if let Err(e) = self.rotate(&extra, &borrowed) {
            // The sandbox still runs on its old root: give it its upper
            // layer back and forget the snapshot.
            drop(borrowed);
            drop(leases);
            snapshot::thaw(root, &snap.id, &upper, tag);
            return Err(e);
        }
        st.snapshot_layers = extra;
        st.write(&self.dir).map_err(io("writing state.json"))?;
        Ok(snap.id)
    }

    /// Starts `count` sandboxes named `{prefix}-{i}` from this sandbox's
    /// current filesystem (a snapshot), with its settings. They are
    /// detached when `detached` is set (they outlive this process).
    pub fn fork(&self, count: usize, prefix: &str, detached: bool) -> Result<Vec<Sandbox>> {
        let id = crate::agent::shell::new_nonce()[..16].to_string();
        let tag = format!("envbox-fork/s{id}:latest");
        self.snapshot(Some(&tag))?;
        let st = State::read(&self.dir).map_err(|source| Error::Io { step: "reading state.json", name: self.name.clone(), source })?;
        let mut cfg = SandboxConfig { image: Image::Ref(tag.clone()), group: None, detached, ..st.config.clone() };
        // The parent holds its published port.
        if let Some(serve) = cfg.serve.as_mut() {
            serve.publish = None;
        }
        let made: Vec<Result<Sandbox>> = std::thread::scope(|s| {
            let tasks: Vec<_> = (0..count)
                .map(|i| {
                    let cfg = &cfg;
                    s.spawn(move || Sandbox::create(cfg, &format!("{prefix}-{i}")))
                })
                .collect();
            tasks.into_iter().map(|t| t.join().unwrap_or_else(|_| Err(refuse(&self.name, "a fork's creating thread panicked")))).collect()
        });
        // The children hold leases on the snapshot; the tag is not needed.
        let _ = snapshot::untag(&self.root, &tag);
        let mut ok = Vec::new();
        let mut first_err = None;
        for r in made {
            match r {
                Ok(sb) => ok.push(sb),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_err {
            for sb in ok {
                let _ = sb.delete_and_wait();
            }
            return Err(e);
        }
        Ok(ok)
    }
}
