#!/usr/bin/env bash
# Builds the python venv with the reference evaluation framework (affinetes
# 0.2.0 from PyPI), FastAPI and uvicorn: used by the compatibility tests and
# by `envbox bench --env` for the reference server. Made with the host's
# /usr/bin/python3, so sandboxes on the host image can run it too.
#   usage: benches/make-reference-venv.sh [DIR]   (default /var/cache/envbox-test-venv)
set -euo pipefail
dir=${1:-/var/cache/envbox-test-venv}
tmp="$dir.tmp.$$"
rm -rf "$tmp"
/usr/bin/python3 -m venv "$tmp"
for i in 1 2 3; do
    if "$tmp/bin/pip" install -q --disable-pip-version-check 'affinetes==0.2.0' fastapi uvicorn httpx; then
        break
    fi
    [[ $i == 3 ]] && exit 1
    sleep $((i * 5))
done
"$tmp/bin/python" -c 'import affinetes, fastapi, uvicorn, httpx'
# venvs record their own path: rebuild in place under the final name.
rm -rf "$dir"
mv "$tmp" "$dir"
sed -i "s|$tmp|$dir|g" "$dir/pyvenv.cfg" "$dir"/bin/* 2>/dev/null || true
echo "reference venv ready: $dir"
