//! The crate's error, `ImageError` (named so it does not clash with the runtime's `Error`):
//! one variant per module; each module's enum names the failing step.

use crate::digest::DigestError;
use crate::image::UserError;
use crate::push::PushError;
use crate::reference::ReferenceError;
use crate::registry::RegistryError;
use crate::source::SourceError;
use crate::store::StoreError;
use crate::unpack::UnpackError;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error(transparent)]
    Digest(#[from] DigestError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Unpack(#[from] UnpackError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    User(#[from] UserError),
    #[error(transparent)]
    Push(#[from] PushError),
}

pub type Result<T> = std::result::Result<T, ImageError>;
