//! Pushing an image from the store to a registry, one straight sequence: write each layer
//! directory back out as a gzip layer tar (hashed on the way), upload the blobs the
//! repository lacks, then the config, then the manifest under the tag.
//!
//! The store keeps layers unpacked, not the blobs they came from, so their tars are written
//! again with [`write_layer_tar`]. A layer whose tar came from that writer (pushed or built
//! by envbox) comes out byte for byte the same, so its diff_id holds, and when every layer's
//! does, the stored config is pushed as is: the pushed image keeps the local image id. A
//! layer that came from another tool's tar (other header details, other entry order) comes
//! out with a new diff_id; then the config is pushed with `rootfs.diff_ids` replaced and
//! everything else kept, and the pushed image gets a new id
//! ([`PushReport::config_rewritten`]). Pulling that back and pushing it again is byte for
//! byte.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};

use flate2::{Compression, GzBuilder};

use crate::digest::{Digest, HashingWriter};
use crate::error::Result;
use crate::image::Image;
use crate::layer::write_layer_tar;
use crate::oci::{self, Descriptor, Manifest};
use crate::reference::Reference;
use crate::registry::{Body, PullOptions, Registry};
use crate::store::{Store, StoreError};

/// Why a push failed before or besides talking to the registry (those errors are
/// [`crate::registry::RegistryError`]s).
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("cannot push to {reference}: a push needs a tag to name the image by (e.g. {suggestion})")]
    NeedsTag { reference: String, suggestion: String },
    #[error("cannot push to {reference}: name only a tag; the manifest digest is computed from what is pushed and cannot be chosen")]
    DigestGiven { reference: String },
    #[error("reading the config of image {id} at {path} (store damaged?): remove the image, then pull or import it again")]
    ReadConfig {
        id: Digest,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the stored config of image {id} at {path} has digest {actual} (store damaged?): remove the image, then pull or import it again"
    )]
    ConfigCorrupt { id: Digest, path: PathBuf, actual: Digest },
    #[error("the config of image {id} has no `rootfs` object to record the layers' diff_ids in: the image is malformed")]
    ConfigShape { id: Digest },
    #[error("writing layer {diff_id} ({dir}) as a compressed layer tar to {out}")]
    WriteLayer {
        diff_id: Digest,
        dir: PathBuf,
        out: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// How a push went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushReport {
    /// The digest of the manifest pushed: `name@<this>` pulls exactly this image.
    pub manifest_digest: Digest,
    /// The digest of the config pushed: the image id a pull of the pushed image gets.
    pub config_digest: Digest,
    /// The layers' diff_ids as pushed, bottom → top.
    pub diff_ids: Vec<Digest>,
    /// Whether some layer came out with another diff_id than the store recorded (its tar was
    /// first written by another tool), so the config was pushed with the new diff_ids and
    /// `config_digest` differs from the local image id. `false`: the stored config was
    /// pushed byte for byte and `config_digest` is the local image id.
    pub config_rewritten: bool,
    /// Layer blobs uploaded, and those the repository had already (a layer listed twice
    /// counts once).
    pub layers_uploaded: usize,
    pub layers_present: usize,
    /// Bytes of blobs (compressed layers and the config) uploaded.
    pub bytes_uploaded: u64,
}

/// A layer as written for the push.
#[derive(Clone)]
struct PushedLayer {
    diff_id: Digest,
    blob: Descriptor,
    uploaded: bool,
}

/// The push's directory under the store's `tmp/`, removed however the push ends.
struct WorkDir(PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

impl Store {
    /// Uploads `image` (from this store) to the registry and repository of `target`, tagged
    /// with target's tag, and returns what was done. `target` must have a tag and no digest.
    ///
    /// Connection, credentials, plain http (loopback and `insecure_registries` only),
    /// retries and timeouts are as for [`Store::pull`]; `opts.parallel` (at most 4) layers
    /// are compressed and uploaded at once. The local store is not changed.
    pub fn push(&self, image: &Image, target: &Reference, opts: &PullOptions) -> Result<PushReport> {
        // 0. a tag to push to: refused before anything is read or sent
        let tag = push_tag(target)?;
        // 1. the image as this store has it, leased so gc keeps its layers while they are read
        let _lease = self.lease(&image.id)?;
        let image = self.get_by_id(&image.id)?.ok_or_else(|| StoreError::NotFound(image.id.to_string()))?;
        let stored_config = self.read_config(&image.id)?;
        // 2. connect: scheme, credentials, a token with push access
        let reg = Registry::connect_for_push(target, opts)?;
        // 3. layers: tar + gzip each into tmp/ (hashing both), upload it unless present
        let work = WorkDir(self.temp_dir("push")?);
        let (layers, layers_uploaded, layers_present) = push_layers(&reg, &image, &work.0, opts.parallel.clamp(1, 4))?;
        // 4. the config: as stored if every diff_id came out the same, else with the new ones
        let diff_ids: Vec<Digest> = layers.iter().map(|l| l.diff_id.clone()).collect();
        let config_rewritten = diff_ids != image.diff_ids;
        let config = if config_rewritten { rewrite_diff_ids(&stored_config, &image.id, &diff_ids)? } else { stored_config };
        let config_digest = Digest::of(&config);
        let mut bytes_uploaded: u64 = unique(&layers).filter(|l| l.uploaded).map(|l| l.blob.size).sum();
        if !reg.blob_exists(&config_digest)? {
            reg.upload_blob(&config_digest, Body::Bytes(&config))?;
            bytes_uploaded += config.len() as u64;
        }
        // 5. the manifest, under the tag (the registry checks that every blob it names is there)
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(oci::OCI_MANIFEST.into()),
            config: Descriptor {
                media_type: oci::OCI_CONFIG.into(),
                digest: config_digest.clone(),
                size: config.len() as u64,
                platform: None,
                annotations: None,
            },
            layers: layers.iter().map(|l| l.blob.clone()).collect(),
        };
        let manifest_bytes = serde_json::to_vec(&manifest).expect("manifest serialises");
        reg.put_manifest(tag, &manifest_bytes, oci::OCI_MANIFEST)?;
        Ok(PushReport {
            manifest_digest: Digest::of(&manifest_bytes),
            config_digest,
            diff_ids,
            config_rewritten,
            layers_uploaded,
            layers_present,
            bytes_uploaded,
        })
    }

    /// The stored config blob of image `id`, verified.
    fn read_config(&self, id: &Digest) -> Result<Vec<u8>> {
        let path = self.blob_path(id);
        let bytes = fs::read(&path).map_err(|source| PushError::ReadConfig { id: id.clone(), path: path.clone(), source })?;
        let actual = Digest::of(&bytes);
        if actual != *id {
            return Err(PushError::ConfigCorrupt { id: id.clone(), path, actual }.into());
        }
        Ok(bytes)
    }
}

fn push_tag(target: &Reference) -> std::result::Result<&str, PushError> {
    match (target.tag(), target.digest()) {
        (Some(tag), None) => Ok(tag),
        (None, _) => Err(PushError::NeedsTag {
            reference: target.to_string(),
            suggestion: format!("{}/{}:latest", target.registry(), target.repository()),
        }),
        (Some(_), Some(_)) => Err(PushError::DigestGiven { reference: target.to_string() }),
    }
}

/// Each distinct layer once (by the diff_id pushed).
fn unique(layers: &[PushedLayer]) -> impl Iterator<Item = &PushedLayer> {
    layers.iter().enumerate().filter(|(i, l)| !layers[..*i].iter().any(|o| o.diff_id == l.diff_id)).map(|(_, l)| l)
}

/// Writes and uploads the image's layers, up to `parallel` at once; a layer listed twice
/// is done once. Returns the layers bottom → top and the (uploaded, present) counts.
fn push_layers(reg: &Registry, image: &Image, work: &Path, parallel: usize) -> Result<(Vec<PushedLayer>, usize, usize)> {
    let first: Vec<usize> = (0..image.diff_ids.len()).filter(|&i| !image.diff_ids[..i].contains(&image.diff_ids[i])).collect();
    let results = crate::work::each(&first, parallel, |&i| {
        push_layer(reg, &image.layers[i], &image.diff_ids[i], &work.join(format!("layer-{i}.tar.gz")))
    });
    let mut done = HashMap::new();
    for (&i, r) in first.iter().zip(results) {
        done.insert(image.diff_ids[i].clone(), r?);
    }
    let uploaded = done.values().filter(|l| l.uploaded).count();
    let present = done.len() - uploaded;
    let layers = image.diff_ids.iter().map(|d| done[d].clone()).collect();
    Ok((layers, uploaded, present))
}

/// One layer: written to `out`, uploaded unless the repository has it, `out` removed (a
/// layer can be GBs; the next one should not wait for the whole push to end).
fn push_layer(reg: &Registry, dir: &Path, recorded: &Digest, out: &Path) -> Result<PushedLayer> {
    let (diff_id, blob) = write_gzip_layer(dir, out).map_err(|source| PushError::WriteLayer {
        diff_id: recorded.clone(),
        dir: dir.to_path_buf(),
        out: out.to_path_buf(),
        source,
    })?;
    let present = reg.blob_exists(&blob.digest)?;
    if !present {
        reg.upload_blob(&blob.digest, Body::File { path: out, size: blob.size })?;
    }
    let _ = fs::remove_file(out);
    Ok(PushedLayer { diff_id, blob, uploaded: !present })
}

/// Writes the layer directory `dir` to `out` as a gzip layer tar, streaming; returns the
/// tar's digest (the diff_id) and the blob's descriptor. Deterministic: the same tree gives
/// the same bytes (the tar is, and the gzip header has no name, a zero mtime and a fixed OS
/// byte, at a fixed level).
fn write_gzip_layer(dir: &Path, out: &Path) -> io::Result<(Digest, Descriptor)> {
    let file = File::create(out)?;
    let blob = HashingWriter::new(BufWriter::with_capacity(256 << 10, file));
    let gz = GzBuilder::new().mtime(0).operating_system(255).write(blob, Compression::default());
    let mut tar = HashingWriter::new(gz);
    write_layer_tar(dir, &mut tar)?;
    let (diff_id, _, gz) = tar.finish();
    let (digest, size, file) = gz.finish()?.finish();
    file.into_inner().map_err(io::IntoInnerError::into_error)?;
    Ok((diff_id, Descriptor { media_type: oci::OCI_LAYER_GZIP.into(), digest, size, platform: None, annotations: None }))
}

/// The config with `rootfs.diff_ids` replaced; every other field (known to this crate or
/// not) is kept, in its order.
fn rewrite_diff_ids(config: &[u8], id: &Digest, diff_ids: &[Digest]) -> Result<Vec<u8>> {
    let mut v: serde_json::Value = serde_json::from_slice(config).map_err(|source| StoreError::BadConfig { digest: id.clone(), source })?;
    let Some(rootfs) = v.get_mut("rootfs").and_then(serde_json::Value::as_object_mut) else {
        return Err(PushError::ConfigShape { id: id.clone() }.into());
    };
    rootfs.insert("diff_ids".into(), diff_ids.iter().map(|d| serde_json::Value::String(d.to_string())).collect());
    Ok(serde_json::to_vec(&v).expect("a JSON value serialises"))
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    #[test]
    fn gzip_layers_are_deterministic_and_hash_both_streams() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("layer");
        fs::create_dir_all(dir.join("a/b")).unwrap();
        fs::write(dir.join("a/b/f"), vec![b'x'; 100_000]).unwrap();
        fs::write(dir.join("top"), b"top").unwrap();
        let (d1, b1) = write_gzip_layer(&dir, &t.path().join("1.tar.gz")).unwrap();
        let (d2, b2) = write_gzip_layer(&dir, &t.path().join("2.tar.gz")).unwrap();
        assert_eq!((&d1, &b1.digest, b1.size), (&d2, &b2.digest, b2.size));
        let gz = fs::read(t.path().join("1.tar.gz")).unwrap();
        assert_eq!(gz, fs::read(t.path().join("2.tar.gz")).unwrap());
        assert_eq!((Digest::of(&gz), gz.len() as u64), (b1.digest.clone(), b1.size));
        // header: magic, deflate, no flags (no name, comment, extra), mtime 0, OS 255
        assert_eq!(&gz[..4], &[0x1f, 0x8b, 8, 0]);
        assert_eq!(&gz[4..8], &[0, 0, 0, 0]);
        assert_eq!(gz[9], 255);
        // the diff_id is the digest of the tar inside, which is what write_layer_tar writes
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(&gz[..]).read_to_end(&mut tar).unwrap();
        assert_eq!(Digest::of(&tar), d1);
        let mut direct = Vec::new();
        write_layer_tar(&dir, &mut direct).unwrap();
        assert_eq!(tar, direct);
        assert_eq!(b1.media_type, oci::OCI_LAYER_GZIP);
    }

    #[test]
    fn rewriting_diff_ids_keeps_every_other_field_in_order() {
        let old = Digest::of(b"old");
        let new = Digest::of(b"new");
        let config = format!(
            r#"{{"created":"2024-01-01T00:00:00Z","architecture":"amd64","os":"linux","config":{{"Env":["A=1"]}},"rootfs":{{"type":"layers","diff_ids":["{old}"]}},"history":[{{"created_by":"x"}}],"x-unknown":{{"n":1.5}}}}"#
        );
        let id = Digest::of(config.as_bytes());
        let out = rewrite_diff_ids(config.as_bytes(), &id, std::slice::from_ref(&new)).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), config.replace(&old.to_string(), &new.to_string()));
        let err = rewrite_diff_ids(br#"{"os":"linux"}"#, &id, &[new]).unwrap_err();
        assert!(err.to_string().contains("no `rootfs`"), "{err}");
    }

    #[test]
    fn a_push_needs_a_tag_and_no_digest() {
        let d = Digest::of(b"m");
        assert_eq!(push_tag(&Reference::parse("127.0.0.1:5000/team/x:v1").unwrap()).unwrap(), "v1");
        assert_eq!(push_tag(&Reference::parse("127.0.0.1:5000/team/x").unwrap()).unwrap(), "latest");
        let e = push_tag(&Reference::parse(&format!("127.0.0.1:5000/team/x@{d}")).unwrap()).unwrap_err();
        assert!(matches!(e, PushError::NeedsTag { .. }) && e.to_string().contains("127.0.0.1:5000/team/x:latest"), "{e}");
        let e = push_tag(&Reference::parse(&format!("127.0.0.1:5000/team/x:v1@{d}")).unwrap()).unwrap_err();
        assert!(matches!(e, PushError::DigestGiven { .. }), "{e}");
    }
}
