//! The image store: content-addressed layers shared between images, image records, tags.
//!
//! Layout under the store directory:
//!
//! ```text
//! store.lock              flock: shared while pulling/importing, exclusive for gc
//! refs.json               {"docker.io/library/python:3.12-slim": "sha256:<image id>", ...}
//! refs.lock               flock held while refs.json is rewritten (temp file + rename)
//! blobs/sha256/<hex>      manifests and configs, as fetched (verified)
//! layers/<diff_id hex>/   one unpacked layer each (overlayfs format), read-only by contract
//! locks/<diff_id hex>     flock per layer: exactly one process unpacks a given layer
//! images/<id hex>.json    image record: layer diff_ids, config, sizes
//! leases/<id hex>         flock (shared) held by users of an image: gc keeps leased images
//! tmp/                    downloads and unpacks in progress; emptied by gc
//! ```
//!
//! Publishing is atomic: a layer is unpacked into `tmp/` and renamed to `layers/<hex>` only
//! once complete and verified, so a layer directory that exists is complete. Records and
//! `refs.json` are written to a temp file and renamed.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use rustix::fs::FlockOperation;
use serde::{Deserialize, Serialize};

use crate::digest::{Digest, HashingReader};
use crate::error::Result;
use crate::image::{Image, ImageConfig};
use crate::oci::{ConfigFile, Descriptor, RunConfig};
use crate::reference::Reference;
use crate::unpack::{self, Limits, UnpackError};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("image store: {step} {path}")]
    Io {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("image store file {path} is unreadable (damaged?): remove it, then pull the image again")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{what} has digest {actual} but {expected} was asked for: the source served corrupt or tampered data; nothing was stored")]
    DigestMismatch { what: String, expected: Digest, actual: Digest },
    #[error("image config {digest} is not valid JSON of an image config")]
    BadConfig {
        digest: Digest,
        #[source]
        source: serde_json::Error,
    },
    #[error("image manifest lists {manifest} layers but its config lists {config} diff_ids: the image is malformed")]
    LayerCountMismatch { manifest: usize, config: usize },
    #[error("unpacking layer {diff_id} (blob {blob})")]
    Unpack {
        diff_id: Digest,
        blob: String,
        #[source]
        source: UnpackError,
    },
    #[error("no image {0} in the store: `envbox images` lists what is there")]
    NotFound(String),
    #[error("image {id} is missing its layer {diff_id} (store damaged?): remove the image and pull it again")]
    LayerMissing { id: Digest, diff_id: Digest },
}

type SResult<T> = std::result::Result<T, StoreError>;

fn io_err<'a>(step: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io { step, path: path.to_path_buf(), source }
}

/// One layer of an image being installed.
#[derive(Debug, Clone)]
pub(crate) struct LayerSpec {
    /// The compressed blob as the manifest names it (`None` for a docker-archive, which
    /// stores layers uncompressed and only by path).
    pub blob: Option<Descriptor>,
    pub diff_id: Digest,
    /// Where the source finds it (a path inside an archive, a URL...). For messages.
    pub locator: String,
}

/// A layer blob opened by a source. `verified`: the source checked `blob.digest` already.
pub(crate) struct OpenedBlob {
    pub reader: Box<dyn Read + Send>,
    pub verified: bool,
}

/// Where the bytes of an image come from (registry, OCI layout, docker-archive, directory).
pub(crate) trait BlobSource: Sync {
    /// Opens a layer blob; `scratch` is a store temp dir the source may download into.
    fn open_layer(&self, layer: &LayerSpec, scratch: &Path) -> Result<OpenedBlob>;
}

/// An image whose manifest and config a source has resolved; layers not yet fetched.
pub(crate) struct ResolvedImage {
    pub manifest_digest: Option<Digest>,
    pub manifest_bytes: Option<Vec<u8>>,
    pub config_digest: Digest,
    pub config_bytes: Vec<u8>,
    pub layers: Vec<Option<Descriptor>>,
    pub locators: Vec<String>,
}

/// How a pull or import went.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstallReport {
    pub layers_unpacked: usize,
    pub layers_reused: usize,
    /// Bytes of uncompressed layer tar unpacked by this call.
    pub bytes_unpacked: u64,
}

/// What [`Store::gc`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    pub images_removed: usize,
    pub layers_removed: usize,
    pub blobs_removed: usize,
    pub tmp_removed: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    id: Digest,
    manifest: Option<Digest>,
    diff_ids: Vec<Digest>,
    config: ImageConfig,
    size: u64,
    created: Option<String>,
    architecture: String,
    os: String,
}

/// A shared lock that keeps an image (and its layers) from [`Store::gc`]. Dropping it (and
/// every duplicate of its descriptor) releases it. The descriptor is close-on-exec; to let a
/// sandbox's init process hold the lease for the sandbox's life, pass it a duplicate without
/// `FD_CLOEXEC`.
#[derive(Debug)]
pub struct Lease {
    file: File,
    pub id: Digest,
}

impl std::os::fd::AsFd for Lease {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// The image store. Cheap to open; safe to use from several threads and processes at once.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

static UNIQUE: AtomicU64 = AtomicU64::new(0);

impl Store {
    /// Opens (creating if needed) the store at `root`. The runtime keeps it at
    /// `<state root>/.images` (so it can never collide with a sandbox name).
    pub fn open(root: &Path) -> Result<Store> {
        for sub in ["blobs/sha256", "layers", "locks", "leases", "images", "tmp"] {
            let p = root.join(sub);
            fs::create_dir_all(&p).map_err(io_err("creating", &p))?;
        }
        Ok(Store { root: root.to_path_buf() })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn layer_dir(&self, diff_id: &Digest) -> PathBuf {
        self.root.join("layers").join(diff_id.hex())
    }

    fn record_path(&self, id: &Digest) -> PathBuf {
        self.root.join("images").join(format!("{}.json", id.hex()))
    }

    pub(crate) fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    fn lock(&self, rel: &str, op: FlockOperation) -> SResult<File> {
        let path = self.root.join(rel);
        let f = File::options().create(true).truncate(false).read(true).write(true).open(&path).map_err(io_err("opening lock", &path))?;
        rustix::fs::flock(&f, op).map_err(|e| StoreError::Io { step: "flock", path, source: e.into() })?;
        Ok(f)
    }

    /// A fresh directory under `tmp/`.
    pub(crate) fn temp_dir(&self, what: &str) -> Result<PathBuf> {
        loop {
            let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
            let n = UNIQUE.fetch_add(1, Ordering::Relaxed);
            let p = self.root.join("tmp").join(format!("{what}-{}-{n}-{nanos}", std::process::id()));
            match fs::create_dir(&p) {
                Ok(()) => return Ok(p),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_err("creating temp dir", &p)(e).into()),
            }
        }
    }

    /// Writes `bytes` to `dest` atomically (temp file in the same dir, then rename).
    fn write_atomic(&self, dest: &Path, bytes: &[u8]) -> SResult<()> {
        let n = UNIQUE.fetch_add(1, Ordering::Relaxed);
        let tmp = dest.with_extension(format!("tmp-{}-{n}", std::process::id()));
        let mut f = File::create(&tmp).map_err(io_err("creating", &tmp))?;
        f.write_all(bytes).map_err(io_err("writing", &tmp))?;
        drop(f);
        fs::rename(&tmp, dest).map_err(io_err("renaming into place", dest))
    }

    fn read_refs(&self) -> SResult<BTreeMap<String, Digest>> {
        let path = self.root.join("refs.json");
        match fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|source| StoreError::Corrupt { path, source }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(io_err("reading", &path)(e)),
        }
    }

    fn update_refs(&self, f: impl FnOnce(&mut BTreeMap<String, Digest>)) -> SResult<()> {
        let _g = self.lock("refs.lock", FlockOperation::LockExclusive)?;
        let mut refs = self.read_refs()?;
        f(&mut refs);
        let bytes = serde_json::to_vec_pretty(&refs).expect("refs serialise");
        self.write_atomic(&self.root.join("refs.json"), &bytes)
    }

    fn read_record(&self, id: &Digest) -> SResult<Option<Record>> {
        let path = self.record_path(id);
        match fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|source| StoreError::Corrupt { path, source }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("reading", &path)(e)),
        }
    }

    fn to_image(&self, rec: Record, refs: &BTreeMap<String, Digest>) -> SResult<Image> {
        let mut layers = Vec::with_capacity(rec.diff_ids.len());
        for d in &rec.diff_ids {
            let p = self.layer_dir(d);
            if !p.is_dir() {
                return Err(StoreError::LayerMissing { id: rec.id.clone(), diff_id: d.clone() });
            }
            layers.push(p);
        }
        let mut references: Vec<Reference> =
            refs.iter().filter(|(_, id)| **id == rec.id).filter_map(|(r, _)| Reference::parse(r).ok()).collect();
        references.sort_by_key(|r| r.to_string());
        Ok(Image {
            id: rec.id,
            manifest_digest: rec.manifest,
            references,
            layers,
            diff_ids: rec.diff_ids,
            config: rec.config,
            size: rec.size,
            created: rec.created,
            architecture: rec.architecture,
            os: rec.os,
        })
    }

    /// The image a reference names, if it is in the store. A `name@sha256:…` reference also
    /// finds an image pulled by tag whose manifest has that digest.
    pub fn get(&self, r: &Reference) -> Result<Option<Image>> {
        let refs = self.read_refs()?;
        let id = match refs.get(&r.to_string()) {
            Some(id) => Some(id.clone()),
            None => match r.digest() {
                Some(d) => self.records()?.into_iter().find(|rec| rec.manifest.as_ref() == Some(d)).map(|rec| rec.id),
                None => None,
            },
        };
        match id {
            Some(id) => self.get_by_id(&id),
            None => Ok(None),
        }
    }

    /// The image with this id (config digest), if present.
    pub fn get_by_id(&self, id: &Digest) -> Result<Option<Image>> {
        let refs = self.read_refs()?;
        match self.read_record(id)? {
            Some(rec) => Ok(Some(self.to_image(rec, &refs)?)),
            None => Ok(None),
        }
    }

    fn records(&self) -> SResult<Vec<Record>> {
        let dir = self.root.join("images");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).map_err(io_err("listing", &dir))? {
            let e = e.map_err(io_err("listing", &dir))?;
            let name = e.file_name();
            let Some(hex) = name.to_str().and_then(|n| n.strip_suffix(".json")) else { continue };
            let Ok(id) = Digest::from_hex(hex) else { continue };
            if let Some(rec) = self.read_record(&id)? {
                out.push(rec);
            }
        }
        Ok(out)
    }

    /// The tagged images (`envbox images`), sorted by first reference then id. Untagged
    /// images (after [`Store::remove`], before [`Store::gc`]) are not listed.
    pub fn list(&self) -> Result<Vec<Image>> {
        let refs = self.read_refs()?;
        let mut out = Vec::new();
        for rec in self.records()? {
            let img = self.to_image(rec, &refs)?;
            if !img.references.is_empty() {
                out.push(img);
            }
        }
        out.sort_by_key(|i| (i.references.first().map(|r| r.to_string()).unwrap_or_default(), i.id.clone()));
        Ok(out)
    }

    /// Removes a tag (`envbox rmi`). The image stays (untagged, no longer listed) until the
    /// next [`Store::gc`], which removes it and its layers unless another tag or the `keep`
    /// list (images of live sandboxes) still needs them. Returns the image as it was.
    pub fn remove(&self, r: &Reference) -> Result<Image> {
        let image = self.get(r)?.ok_or_else(|| StoreError::NotFound(r.familiar()))?;
        let key = r.to_string();
        let id = image.id.clone();
        self.update_refs(|refs| {
            if refs.remove(&key).is_none() {
                // found through its manifest digest: drop every tag of that image in this repository
                refs.retain(|k, v| !(*v == id && Reference::parse(k).is_ok_and(|kr| kr.repository() == r.repository())));
            }
        })?;
        Ok(image)
    }

    /// Takes a lease on an image: while the returned [`Lease`] (or any duplicate of its file
    /// descriptor, e.g. one inherited by a sandbox's init process) stays open, [`Store::gc`]
    /// keeps the image and its layers even if it is untagged. Fails if the image is gone.
    pub fn lease(&self, id: &Digest) -> Result<Lease> {
        // Under the store lock (shared), so a running gc finishes first and cannot remove
        // the image between the check and the lock.
        let _g = self.lock("store.lock", FlockOperation::LockShared)?;
        if self.read_record(id)?.is_none() {
            return Err(StoreError::NotFound(id.to_string()).into());
        }
        let file = self.lock(&format!("leases/{}", id.hex()), FlockOperation::LockShared)?;
        Ok(Lease { file, id: id.clone() })
    }

    /// Whether someone holds a lease on `id` (gc runs with the store lock held exclusively).
    fn leased(&self, id: &Digest) -> bool {
        let path = self.root.join("leases").join(id.hex());
        let Ok(f) = File::open(&path) else { return false };
        match rustix::fs::flock(&f, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {
                let _ = fs::remove_file(&path);
                false
            }
            Err(_) => true,
        }
    }

    /// Removes layers, blobs and image records that no tag, no lease ([`Store::lease`]) and
    /// no image in `keep` refers to, and leftovers in `tmp/`. Waits for running pulls to
    /// finish, and holds them off while it runs.
    pub fn gc(&self, keep: &[Digest]) -> Result<GcReport> {
        let _g = self.lock("store.lock", FlockOperation::LockExclusive)?;
        let mut report = GcReport::default();
        let refs = self.read_refs()?;
        let mut live_ids: BTreeSet<Digest> = refs.values().cloned().chain(keep.iter().cloned()).collect();
        for rec in self.records()? {
            if !live_ids.contains(&rec.id) && self.leased(&rec.id) {
                live_ids.insert(rec.id.clone());
            }
        }
        let mut live_layers = BTreeSet::new();
        let mut live_blobs = BTreeSet::new();
        for rec in self.records()? {
            if live_ids.contains(&rec.id) {
                live_layers.extend(rec.diff_ids.iter().map(|d| d.hex().to_owned()));
                live_blobs.insert(rec.id.hex().to_owned());
                if let Some(m) = &rec.manifest {
                    live_blobs.insert(m.hex().to_owned());
                }
            } else {
                let p = self.record_path(&rec.id);
                fs::remove_file(&p).map_err(io_err("removing", &p))?;
                report.images_removed += 1;
            }
        }
        let layers = self.root.join("layers");
        for e in fs::read_dir(&layers).map_err(io_err("listing", &layers))? {
            let e = e.map_err(io_err("listing", &layers))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if !live_layers.contains(&name) {
                // Rename first so a half-deleted layer is never visible under layers/.
                let doomed = self.temp_dir("gc")?;
                let from = e.path();
                fs::rename(&from, doomed.join("layer")).map_err(io_err("moving out", &from))?;
                fs::remove_dir_all(&doomed).map_err(io_err("removing", &doomed))?;
                report.layers_removed += 1;
            }
        }
        let blobs = self.root.join("blobs/sha256");
        for e in fs::read_dir(&blobs).map_err(io_err("listing", &blobs))? {
            let e = e.map_err(io_err("listing", &blobs))?;
            if !live_blobs.contains(&*e.file_name().to_string_lossy()) {
                fs::remove_file(e.path()).map_err(io_err("removing", &e.path()))?;
                report.blobs_removed += 1;
            }
        }
        // Lock files of layers that are gone (removed above, or never published).
        let locks = self.root.join("locks");
        for e in fs::read_dir(&locks).map_err(io_err("listing", &locks))? {
            let e = e.map_err(io_err("listing", &locks))?;
            if !live_layers.contains(&*e.file_name().to_string_lossy()) {
                let _ = fs::remove_file(e.path());
            }
        }
        let tmp = self.root.join("tmp");
        for e in fs::read_dir(&tmp).map_err(io_err("listing", &tmp))? {
            let e = e.map_err(io_err("listing", &tmp))?;
            let p = e.path();
            // A push or an import works in tmp/ outside the store lock: keep a live owner's.
            if tmp_owner_alive(&e.file_name().to_string_lossy()) {
                continue;
            }
            let r = if e.file_type().is_ok_and(|t| t.is_dir()) { fs::remove_dir_all(&p) } else { fs::remove_file(&p) };
            r.map_err(io_err("removing", &p))?;
            report.tmp_removed += 1;
        }
        Ok(report)
    }

    /// Adds an image made on this machine (a build step): the layers of `base` (none for
    /// `FROM scratch`) with the uncompressed layer tars `layer_tars` stacked on top (bottom
    /// to top; each unpacked through the same hostile-tar-safe unpacker as a pull, and
    /// shared with any image that has the same layer), and `config` as its run config.
    /// Tagged `tag` if given; an untagged image lives while a lease or a `keep` entry of
    /// [`Store::gc`] holds it. The config has no `created` time, so the same inputs give
    /// the same image id.
    /// Returns the image with a lease on it, taken before any garbage collection can run.
    pub fn commit(
        &self,
        base: Option<&Image>,
        layer_tars: &[PathBuf],
        config: &RunConfig,
        tag: Option<&Reference>,
    ) -> Result<(Image, Lease)> {
        let mut tars = Vec::with_capacity(layer_tars.len());
        for path in layer_tars {
            let f = File::open(path).map_err(io_err("opening layer tar", path))?;
            let (diff_id, _) = HashingReader::new(f).finish().map_err(io_err("hashing layer tar", path))?;
            tars.push((diff_id, path.clone()));
        }
        let host = crate::oci::host_platform();
        let mut diff_ids: Vec<Digest> = base.map(|b| b.diff_ids.clone()).unwrap_or_default();
        diff_ids.extend(tars.iter().map(|(d, _)| d.clone()));
        let doc = ConfigFile {
            architecture: base.map_or(host.architecture, |b| b.architecture.clone()),
            os: base.map_or(host.os, |b| b.os.clone()),
            created: None,
            config: Some(config.clone()),
            rootfs: crate::oci::RootFs { kind: "layers".into(), diff_ids: diff_ids.clone() },
        };
        let config_bytes = serde_json::to_vec(&doc).expect("config serialises");
        let n = diff_ids.len();
        let resolved = ResolvedImage {
            manifest_digest: None,
            manifest_bytes: None,
            config_digest: Digest::of(&config_bytes),
            config_bytes,
            layers: vec![None; n],
            locators: diff_ids.iter().map(|d| format!("layer {d}")).collect(),
        };
        // Held across install and lease: an untagged image must not meet gc in between.
        let _shared = self.lock("store.lock", FlockOperation::LockShared)?;
        let (img, _) = self.install(tag, resolved, &LocalTars(tars), &Limits::default(), 2)?;
        let file = self.lock(&format!("leases/{}", img.id.hex()), FlockOperation::LockShared)?;
        let lease = Lease { file, id: img.id.clone() };
        Ok((img, lease))
    }

    /// Installs a resolved image: verifies the config, fetches and unpacks missing layers
    /// (up to `parallel` at once, each under its per-layer lock), writes the record, and
    /// points `tag` at it.
    pub(crate) fn install(
        &self,
        tag: Option<&Reference>,
        img: ResolvedImage,
        src: &dyn BlobSource,
        limits: &Limits,
        parallel: usize,
    ) -> Result<(Image, InstallReport)> {
        let _shared = self.lock("store.lock", FlockOperation::LockShared)?;
        let actual = Digest::of(&img.config_bytes);
        if actual != img.config_digest {
            return Err(StoreError::DigestMismatch { what: "image config".into(), expected: img.config_digest, actual }.into());
        }
        let config: ConfigFile = serde_json::from_slice(&img.config_bytes)
            .map_err(|source| StoreError::BadConfig { digest: img.config_digest.clone(), source })?;
        if config.rootfs.diff_ids.len() != img.layers.len() {
            return Err(StoreError::LayerCountMismatch { manifest: img.layers.len(), config: config.rootfs.diff_ids.len() }.into());
        }
        let specs: Vec<LayerSpec> = img
            .layers
            .iter()
            .zip(&config.rootfs.diff_ids)
            .zip(&img.locators)
            .map(|((blob, diff_id), loc)| LayerSpec { blob: blob.clone(), diff_id: diff_id.clone(), locator: loc.clone() })
            .collect();

        let report = self.ensure_layers(&specs, src, limits, parallel.max(1))?;

        // Blobs, then the record, then the tag: whatever a reader finds is complete.
        if let (Some(d), Some(b)) = (&img.manifest_digest, &img.manifest_bytes) {
            self.write_atomic(&self.blob_path(d), b)?;
        }
        self.write_atomic(&self.blob_path(&img.config_digest), &img.config_bytes)?;
        let mut size = 0;
        for d in &config.rootfs.diff_ids {
            size += dir_size(&self.layer_dir(d));
        }
        let rec = Record {
            id: img.config_digest.clone(),
            manifest: img.manifest_digest.clone(),
            diff_ids: config.rootfs.diff_ids.clone(),
            config: ImageConfig::from_run_config(config.config.as_ref()),
            size,
            created: config.created.clone(),
            architecture: config.architecture.clone(),
            os: config.os.clone(),
        };
        self.write_atomic(&self.record_path(&rec.id), &serde_json::to_vec_pretty(&rec).expect("record serialises"))?;
        let id = rec.id.clone();
        if let Some(tag) = tag {
            self.update_refs(|refs| {
                refs.insert(tag.to_string(), id.clone());
            })?;
        }
        let refs = self.read_refs()?;
        Ok((self.to_image(rec, &refs)?, report))
    }

    fn ensure_layers(&self, specs: &[LayerSpec], src: &dyn BlobSource, limits: &Limits, parallel: usize) -> Result<InstallReport> {
        let results = crate::work::each(specs, parallel, |spec| self.ensure_layer(spec, src, limits));
        let mut report = InstallReport::default();
        for r in results {
            match r? {
                Some(bytes) => {
                    report.layers_unpacked += 1;
                    report.bytes_unpacked += bytes;
                }
                None => report.layers_reused += 1,
            }
        }
        Ok(report)
    }

    /// Makes `layers/<diff_id>` exist. Returns the bytes unpacked, or `None` if the layer was
    /// already there (possibly because another process unpacked it while we waited).
    fn ensure_layer(&self, spec: &LayerSpec, src: &dyn BlobSource, limits: &Limits) -> Result<Option<u64>> {
        let dest = self.layer_dir(&spec.diff_id);
        if dest.is_dir() {
            return Ok(None);
        }
        let _lock = self.lock(&format!("locks/{}", spec.diff_id.hex()), FlockOperation::LockExclusive)?;
        if dest.is_dir() {
            // another process published it while we waited for the lock
            return Ok(None);
        }
        let work = self.temp_dir(&format!("layer-{}", &spec.diff_id.hex()[..12]))?;
        let res = self.unpack_into(spec, src, limits, &work);
        let res = res.and_then(|bytes| {
            fs::rename(work.join("rootfs"), &dest).map_err(io_err("publishing layer", &dest))?;
            Ok(bytes)
        });
        // The work dir holds the download (if any) and, on failure, the partial unpack.
        let _ = fs::remove_dir_all(&work);
        Ok(Some(res?))
    }

    fn unpack_into(&self, spec: &LayerSpec, src: &dyn BlobSource, limits: &Limits, work: &Path) -> Result<u64> {
        let rootfs = work.join("rootfs");
        fs::create_dir(&rootfs).map_err(io_err("creating", &rootfs))?;
        let opened = src.open_layer(spec, work)?;
        let wrap = |source| StoreError::Unpack { diff_id: spec.diff_id.clone(), blob: spec.locator.clone(), source };
        match (&spec.blob, opened.verified) {
            (Some(desc), false) => {
                let mut h = HashingReader::new(opened.reader);
                let stats = unpack::unpack_blob(&mut h, &rootfs, Some(&spec.diff_id), limits).map_err(wrap)?;
                let (actual, _) = h.finish().map_err(|e| wrap(UnpackError::Read(e)))?;
                if actual != desc.digest {
                    return Err(StoreError::DigestMismatch {
                        what: format!("layer blob {}", spec.locator),
                        expected: desc.digest.clone(),
                        actual,
                    }
                    .into());
                }
                Ok(stats.tar_bytes)
            }
            _ => Ok(unpack::unpack_blob(opened.reader, &rootfs, Some(&spec.diff_id), limits).map_err(wrap)?.tar_bytes),
        }
    }
}

/// Whether the process that made a `tmp/` entry (`<what>-<pid>-<n>-<nanos>`, see
/// [`Store::temp_dir`]) still runs. Names from elsewhere count as dead.
fn tmp_owner_alive(name: &str) -> bool {
    let mut fields = name.rsplitn(4, '-');
    let (_nanos, _n, pid) = (fields.next(), fields.next(), fields.next());
    pid.and_then(|p| p.parse::<u32>().ok()).is_some_and(|pid| pid != 0 && Path::new("/proc").join(pid.to_string()).exists())
}

/// The layer tars of [`Store::commit`], found by diff_id. Layers of the base are in the
/// store already and never asked for.
struct LocalTars(Vec<(Digest, PathBuf)>);

impl BlobSource for LocalTars {
    fn open_layer(&self, layer: &LayerSpec, _scratch: &Path) -> Result<OpenedBlob> {
        let Some((_, path)) = self.0.iter().find(|(d, _)| *d == layer.diff_id) else {
            // A base layer that vanished from under us (the caller holds no lease?).
            return Err(StoreError::NotFound(format!("layer {}", layer.diff_id)).into());
        };
        let f = File::open(path).map_err(io_err("opening layer tar", path))?;
        Ok(OpenedBlob { reader: Box::new(io::BufReader::new(f)), verified: true })
    }
}

/// Sum of regular file sizes under `dir` (not following symlinks).
fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => total += e.metadata().map_or(0, |m| m.len()),
                _ => {}
            }
        }
    }
    total
}
