//! Root filesystems for envbox.
//!
//! Today: locating (and building on demand) the test root filesystems that
//! `scripts/build-test-rootfs.sh` makes without Docker — a busybox rootfs and
//! a Debian minbase rootfs with bash and python3.

pub mod fixtures;
