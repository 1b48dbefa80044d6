//! Root filesystems for envbox.
//!
//! - [`reference`]: image references as Docker spells them.
//! - [`fixtures`]: the test root filesystems that `scripts/build-test-rootfs.sh` builds.

pub mod digest;
pub mod fixtures;
pub mod reference;
pub mod unpack;

pub use digest::Digest;
pub use reference::{Reference, ReferenceError};
