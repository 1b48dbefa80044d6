#!/usr/bin/env bash
# envbox vs agentdocker-lite on the same Debian test rootfs, in one run (run as root):
#   benches/compare.sh [--workers N] [--iterations M] [--json] [--skip-envbox] [...]
# Builds (or reuses) the cached Debian test rootfs, then runs compare_agentdocker_lite.py, which
# uses target/release/envbox (build it first: cargo build --release) unless --envbox is given, and
# installs agentdocker-lite into a venv of its own (/var/cache/envbox-bench/adl-venv) if needed.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
rootfs=$(bash "$here/../rootfs-tools/scripts/build-test-rootfs.sh" debian)
exec python3 "$here/compare_agentdocker_lite.py" --rootfs "$rootfs" "$@"
