//! The JSON documents of the OCI image spec and Docker's schema2 (they share one shape):
//! descriptors, image manifests, indexes / manifest lists, and the image config.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// The `Accept` header for manifest requests: every type this crate can read.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

/// Whether a layer media type is one this crate unpacks (tar, tar+gzip, tar+zstd; the actual
/// compression is told from the blob's magic number). Foreign/non-distributable layers count too.
pub fn is_layer_media_type(mt: &str) -> bool {
    mt.starts_with("application/vnd.oci.image.layer.")
        || mt.starts_with("application/vnd.docker.image.rootfs.")
        || mt == "application/vnd.docker.image.rootfs.diff.tar.gzip"
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// An image manifest (OCI or Docker schema2).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default)]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

/// An OCI index or a Docker manifest list.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default)]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
}

/// Either kind of document a manifest endpoint (or an OCI layout's index) returns.
#[derive(Debug, Clone)]
pub enum ManifestKind {
    Image(Manifest),
    Index(Index),
}

impl ManifestKind {
    /// Decides by the media type (header or field), falling back to the shape of the JSON.
    pub fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<ManifestKind, serde_json::Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Probe {
            media_type: Option<String>,
            manifests: Option<serde_json::Value>,
        }
        let probe: Probe = serde_json::from_slice(bytes)?;
        let mt = content_type.map(|c| c.split(';').next().unwrap_or("").trim().to_owned()).or(probe.media_type);
        let is_index = match mt.as_deref() {
            Some(OCI_INDEX | DOCKER_MANIFEST_LIST) => true,
            Some(OCI_MANIFEST | DOCKER_MANIFEST) => false,
            _ => probe.manifests.is_some(),
        };
        Ok(if is_index { ManifestKind::Index(serde_json::from_slice(bytes)?) } else { ManifestKind::Image(serde_json::from_slice(bytes)?) })
    }
}

/// The host's platform in OCI spelling (`amd64`, `arm64`, ...).
pub fn host_platform() -> Platform {
    let architecture = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    };
    Platform { architecture: architecture.to_owned(), os: "linux".to_owned(), variant: None }
}

/// Picks the manifest for `want` from an index: exact os/architecture (and variant if
/// asked for), else `None`. Attestation manifests (`unknown/unknown`) never match.
pub fn select_platform<'a>(index: &'a Index, want: &Platform) -> Option<&'a Descriptor> {
    index.manifests.iter().find(|d| {
        d.platform.as_ref().is_some_and(|p| {
            p.os == want.os && p.architecture == want.architecture && (want.variant.is_none() || p.variant == want.variant)
        })
    })
}

/// The image config document (only the fields envbox uses).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ConfigFile {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<RunConfig>,
    pub rootfs: RootFs,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub diff_ids: Vec<Digest>,
}

/// The `config` object of an image config: what a container started from it gets.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_kind_by_media_type_and_shape() {
        let idx = br#"{"schemaVersion":2,"manifests":[{"mediaType":"x","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":1,"platform":{"architecture":"arm64","os":"linux","variant":"v8"}},{"mediaType":"x","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":2,"platform":{"architecture":"amd64","os":"linux"}}]}"#;
        let ManifestKind::Index(i) = ManifestKind::parse(idx, None).unwrap() else { panic!("not an index") };
        let amd = Platform { architecture: "amd64".into(), os: "linux".into(), variant: None };
        assert_eq!(select_platform(&i, &amd).unwrap().size, 2);
        let arm = Platform { architecture: "arm64".into(), os: "linux".into(), variant: Some("v8".into()) };
        assert_eq!(select_platform(&i, &arm).unwrap().size, 1);
        let s390 = Platform { architecture: "s390x".into(), os: "linux".into(), variant: None };
        assert!(select_platform(&i, &s390).is_none());
        let m = br#"{"schemaVersion":2,"config":{"mediaType":"a","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":3},"layers":[]}"#;
        assert!(matches!(ManifestKind::parse(m, Some(DOCKER_MANIFEST)).unwrap(), ManifestKind::Image(_)));
        assert!(matches!(ManifestKind::parse(m, None).unwrap(), ManifestKind::Image(_)));
    }

    #[test]
    fn config_fields_are_read() {
        let c = br#"{"architecture":"amd64","os":"linux","config":{"Env":["A=1"],"WorkingDir":"/w","Entrypoint":["/e"],"Cmd":["c"],"User":"1000","Labels":{"k":"v"}},"rootfs":{"type":"layers","diff_ids":[]}}"#;
        let c: ConfigFile = serde_json::from_slice(c).unwrap();
        let r = c.config.unwrap();
        assert_eq!(r.env.unwrap(), vec!["A=1"]);
        assert_eq!(r.working_dir.as_deref(), Some("/w"));
        assert_eq!(r.user.as_deref(), Some("1000"));
    }
}
