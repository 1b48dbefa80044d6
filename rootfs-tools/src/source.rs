//! Local image sources: an OCI image layout (directory or tar), a docker-archive tar as
//! `docker save` writes it, and a plain root filesystem directory.
//!
//! Spelled like skopeo's transports: `oci:PATH[:TAG]`, `docker-archive:PATH`, `dir:PATH`.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::digest::{Digest, HashingReader};
use crate::error::Result;
use crate::oci::{self, ConfigFile, Descriptor, ManifestKind, Platform, RootFs, RunConfig};
use crate::reference::Reference;
use crate::store::{BlobSource, LayerSpec, OpenedBlob, ResolvedImage};

/// Why a local source could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("image source {0:?} is not understood: use oci:PATH[:TAG], docker-archive:PATH or dir:PATH")]
    BadSpec(String),
    #[error("{step} {path}")]
    Io {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {what} is not valid JSON of the expected shape")]
    BadJson {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: {what}")]
    Layout { path: PathBuf, what: String },
    #[error("{path}: blob {digest} has digest {actual}: the archive is corrupt or was tampered with")]
    DigestMismatch { path: PathBuf, digest: Digest, actual: Digest },
}

/// A local image source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// An OCI image layout directory or tar; `tag` selects by `org.opencontainers.image.ref.name`.
    OciLayout { path: PathBuf, tag: Option<String> },
    /// A `docker save` tar.
    DockerArchive { path: PathBuf },
    /// A directory holding a root filesystem, imported as a single layer.
    RootfsDir { path: PathBuf },
}

const REF_NAME: &str = "org.opencontainers.image.ref.name";

impl Source {
    /// Parses `oci:PATH[:TAG]`, `docker-archive:PATH` or `dir:PATH`.
    pub fn parse(spec: &str) -> std::result::Result<Source, SourceError> {
        if let Some(rest) = spec.strip_prefix("oci:").filter(|r| !r.is_empty()) {
            // A tag is after the last ':' unless the whole thing is an existing path.
            if Path::new(rest).exists() || !rest.contains(':') {
                return Ok(Source::OciLayout { path: rest.into(), tag: None });
            }
            let (p, t) = rest.rsplit_once(':').expect("has ':'");
            if p.is_empty() || t.is_empty() || t.contains('/') {
                return Err(SourceError::BadSpec(spec.to_owned()));
            }
            return Ok(Source::OciLayout { path: p.into(), tag: Some(t.to_owned()) });
        }
        if let Some(rest) = spec.strip_prefix("docker-archive:") {
            if !rest.is_empty() {
                return Ok(Source::DockerArchive { path: rest.into() });
            }
        }
        if let Some(rest) = spec.strip_prefix("dir:") {
            if !rest.is_empty() {
                return Ok(Source::RootfsDir { path: rest.into() });
            }
        }
        Err(SourceError::BadSpec(spec.to_owned()))
    }

    /// The name an import gets when none is given: `localhost/<file name>:<tag or latest>`.
    pub fn default_reference(&self) -> Reference {
        let (path, tag) = match self {
            Source::OciLayout { path, tag } => (path, tag.clone()),
            Source::DockerArchive { path } | Source::RootfsDir { path } => (path, None),
        };
        let stem = path.file_stem().map(|s| s.to_string_lossy().to_lowercase()).unwrap_or_default();
        let mut name: String = stem.chars().map(|c| if c.is_ascii_lowercase() || c.is_ascii_digit() { c } else { '-' }).collect();
        name = name.trim_matches('-').to_owned();
        while name.contains("--") {
            name = name.replace("--", "-");
        }
        if name.is_empty() {
            name = "image".into();
        }
        let tag = tag.filter(|t| Reference::parse(&format!("x:{t}")).is_ok()).unwrap_or_else(|| "latest".into());
        Reference::parse(&format!("localhost/{name}:{tag}")).unwrap_or_else(|_| Reference::parse("localhost/image:latest").expect("valid"))
    }
}

/// Reads files of a directory or of an uncompressed tar by relative path.
enum Container {
    Dir(PathBuf),
    Tar { path: PathBuf, index: HashMap<String, (u64, u64)> },
}

impl Container {
    fn open(path: &Path) -> Result<Container> {
        let md = fs::metadata(path).map_err(|source| SourceError::Io { step: "opening", path: path.into(), source })?;
        if md.is_dir() {
            return Ok(Container::Dir(path.into()));
        }
        let f = File::open(path).map_err(|source| SourceError::Io { step: "opening", path: path.into(), source })?;
        let mut ar = tar::Archive::new(f);
        let mut index = HashMap::new();
        let io = |source| SourceError::Io { step: "reading tar", path: path.into(), source };
        for e in ar.entries_with_seek().map_err(io)? {
            let e = e.map_err(io)?;
            if e.header().entry_type().is_file() {
                let name = String::from_utf8_lossy(&e.path_bytes()).trim_start_matches("./").to_owned();
                index.insert(name, (e.raw_file_position(), e.size()));
            }
        }
        Ok(Container::Tar { path: path.into(), index })
    }

    fn path(&self) -> &Path {
        match self {
            Container::Dir(p) | Container::Tar { path: p, .. } => p,
        }
    }

    fn open_file(&self, rel: &str) -> Result<Box<dyn Read + Send>> {
        match self {
            Container::Dir(d) => {
                let p = d.join(rel);
                let f = File::open(&p).map_err(|source| SourceError::Io { step: "opening", path: p, source })?;
                Ok(Box::new(f))
            }
            Container::Tar { path, index } => {
                let Some(&(off, len)) = index.get(rel.trim_start_matches("./")) else {
                    return Err(SourceError::Layout { path: path.clone(), what: format!("{rel} is missing from the archive") }.into());
                };
                let mut f = File::open(path).map_err(|source| SourceError::Io { step: "opening", path: path.clone(), source })?;
                f.seek(SeekFrom::Start(off)).map_err(|source| SourceError::Io { step: "seeking in", path: path.clone(), source })?;
                Ok(Box::new(f.take(len)))
            }
        }
    }

    fn read(&self, rel: &str, max: u64) -> Result<Vec<u8>> {
        let mut buf = Vec::new();
        self.open_file(rel)?.take(max).read_to_end(&mut buf).map_err(|source| SourceError::Io {
            step: "reading",
            path: self.path().join(rel),
            source,
        })?;
        Ok(buf)
    }

    /// A blob by digest (`blobs/sha256/<hex>`), verified.
    fn read_blob(&self, d: &Digest) -> Result<Vec<u8>> {
        let b = self.read(&blob_rel(d), 16 << 20)?;
        let actual = Digest::of(&b);
        if actual != *d {
            return Err(SourceError::DigestMismatch { path: self.path().into(), digest: d.clone(), actual }.into());
        }
        Ok(b)
    }
}

fn blob_rel(d: &Digest) -> String {
    format!("blobs/sha256/{}", d.hex())
}

fn json<T: for<'de> Deserialize<'de>>(bytes: &[u8], path: &Path, what: &'static str) -> Result<T> {
    Ok(serde_json::from_slice(bytes).map_err(|source| SourceError::BadJson { path: path.into(), what, source })?)
}

/// Blobs of an OCI layout or docker archive, read from the container.
pub(crate) struct ContainerBlobs {
    c: Container,
}

impl BlobSource for ContainerBlobs {
    fn open_layer(&self, layer: &LayerSpec, _scratch: &Path) -> Result<OpenedBlob> {
        let rel = match &layer.blob {
            Some(d) => blob_rel(&d.digest),
            None => layer.locator.clone(),
        };
        Ok(OpenedBlob { reader: self.c.open_file(&rel)?, verified: false })
    }
}

/// Resolves an OCI layout (dir or tar) to its image for `platform`.
pub(crate) fn resolve_oci(path: &Path, tag: Option<&str>, platform: &Platform) -> Result<(ResolvedImage, ContainerBlobs)> {
    let c = Container::open(path)?;
    let layout_err = |what: String| SourceError::Layout { path: path.into(), what };
    let index_bytes = c.read("index.json", 16 << 20)?;
    let ManifestKind::Index(index) =
        ManifestKind::parse(&index_bytes, None).map_err(|source| SourceError::BadJson { path: path.into(), what: "index.json", source })?
    else {
        return Err(layout_err("index.json is not an image index".into()).into());
    };
    fn named(d: &Descriptor) -> Option<&str> {
        d.annotations.as_ref().and_then(|a| a.get(REF_NAME)).map(String::as_str)
    }
    let desc = match tag {
        Some(t) => index.manifests.iter().find(|d| named(d) == Some(t)).ok_or_else(|| {
            let have: Vec<&str> = index.manifests.iter().filter_map(named).collect();
            layout_err(format!("no image tagged {t:?} in index.json (tags there: {have:?})"))
        })?,
        None if index.manifests.len() == 1 => &index.manifests[0],
        None => {
            let have: Vec<&str> = index.manifests.iter().filter_map(named).collect();
            return Err(layout_err(format!(
                "index.json holds {} images: name one as oci:PATH:TAG (tags: {have:?})",
                index.manifests.len()
            ))
            .into());
        }
    };
    let mut desc = desc.clone();
    // An entry may itself be an index (multi-platform): pick the platform.
    for _ in 0..4 {
        let bytes = c.read_blob(&desc.digest)?;
        match ManifestKind::parse(&bytes, Some(&desc.media_type).filter(|m| !m.is_empty()).map(String::as_str))
            .map_err(|source| SourceError::BadJson { path: path.into(), what: "manifest", source })?
        {
            ManifestKind::Index(i) => {
                desc = oci::select_platform(&i, platform)
                    .ok_or_else(|| layout_err(format!("no manifest for {}/{} in the image index", platform.os, platform.architecture)))?
                    .clone();
            }
            ManifestKind::Image(m) => {
                let config_bytes = c.read_blob(&m.config.digest)?;
                let locators = m.layers.iter().map(|l| blob_rel(&l.digest)).collect();
                return Ok((
                    ResolvedImage {
                        manifest_digest: Some(desc.digest.clone()),
                        manifest_bytes: Some(bytes),
                        config_digest: m.config.digest.clone(),
                        config_bytes,
                        layers: m.layers.into_iter().map(Some).collect(),
                        locators,
                    },
                    ContainerBlobs { c },
                ));
            }
        }
    }
    Err(layout_err("image indexes nested too deep".into()).into())
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ArchiveEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// Resolves a `docker save` archive (its first image) and the tag it records, if any.
pub(crate) fn resolve_docker_archive(path: &Path) -> Result<(ResolvedImage, ContainerBlobs, Option<Reference>)> {
    let c = Container::open(path)?;
    let entries: Vec<ArchiveEntry> = json(&c.read("manifest.json", 16 << 20)?, path, "manifest.json")?;
    let Some(e) = entries.into_iter().next() else {
        return Err(SourceError::Layout { path: path.into(), what: "manifest.json lists no image".into() }.into());
    };
    let config_bytes = c.read(&e.config, 16 << 20)?;
    let config_digest = Digest::of(&config_bytes);
    let tag = e.repo_tags.unwrap_or_default().into_iter().find_map(|t| Reference::parse(&t).ok());
    Ok((
        ResolvedImage {
            manifest_digest: None,
            manifest_bytes: None,
            config_digest,
            config_bytes,
            layers: vec![None; e.layers.len()],
            locators: e.layers,
        },
        ContainerBlobs { c },
        tag,
    ))
}

/// Tars a rootfs directory into `scratch/layer.tar` and describes it as a one-layer image.
pub(crate) fn resolve_rootfs_dir(dir: &Path, scratch: &Path) -> Result<(ResolvedImage, ContainerBlobs)> {
    let md = fs::metadata(dir).map_err(|source| SourceError::Io { step: "opening", path: dir.into(), source })?;
    if !md.is_dir() {
        return Err(SourceError::Layout { path: dir.into(), what: "not a directory".into() }.into());
    }
    let tar_path = scratch.join("layer.tar");
    let io = |step, source| SourceError::Io { step, path: dir.into(), source };
    let f = File::create(&tar_path).map_err(|e| io("creating temp tar for", e))?;
    let mut b = tar::Builder::new(f);
    b.follow_symlinks(false);
    b.mode(tar::HeaderMode::Complete);
    b.append_dir_all(".", dir).map_err(|e| io("archiving", e))?;
    b.into_inner().map_err(|e| io("archiving", e))?;
    let f = File::open(&tar_path).map_err(|e| io("reading temp tar of", e))?;
    let (diff_id, _) = HashingReader::new(f).finish().map_err(|e| io("hashing temp tar of", e))?;
    let host = oci::host_platform();
    let config = ConfigFile {
        architecture: host.architecture,
        os: host.os,
        created: None,
        config: Some(RunConfig {
            env: Some(vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()]),
            ..RunConfig::default()
        }),
        rootfs: RootFs { kind: "layers".into(), diff_ids: vec![diff_id] },
    };
    let config_bytes = serde_json::to_vec(&config).expect("config serialises");
    Ok((
        ResolvedImage {
            manifest_digest: None,
            manifest_bytes: None,
            config_digest: Digest::of(&config_bytes),
            config_bytes,
            layers: vec![None],
            locators: vec!["layer.tar".into()],
        },
        ContainerBlobs { c: Container::Dir(scratch.into()) },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse() {
        assert_eq!(Source::parse("oci:/x/y").unwrap(), Source::OciLayout { path: "/x/y".into(), tag: None });
        assert_eq!(Source::parse("oci:/x/y:v1").unwrap(), Source::OciLayout { path: "/x/y".into(), tag: Some("v1".into()) });
        assert_eq!(Source::parse("docker-archive:/a.tar").unwrap(), Source::DockerArchive { path: "/a.tar".into() });
        assert_eq!(Source::parse("dir:/srv/rootfs").unwrap(), Source::RootfsDir { path: "/srv/rootfs".into() });
        for bad in ["", "/x", "oci:", "oci::t", "docker-archive:", "dir:", "docker://x", "oci:/x:a/b"] {
            assert!(Source::parse(bad).is_err(), "{bad}");
        }
        let msg = Source::parse("nope").unwrap_err().to_string();
        assert!(msg.contains("oci:PATH"), "{msg}");
    }

    #[test]
    fn default_names() {
        let r = Source::parse("oci:/tmp/My Image_1:v2").unwrap().default_reference();
        assert_eq!(r.to_string(), "localhost/my-image-1:v2");
        assert_eq!(Source::parse("docker-archive:/tmp/busybox.tar").unwrap().default_reference().to_string(), "localhost/busybox:latest");
    }
}
