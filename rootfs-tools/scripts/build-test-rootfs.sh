#!/usr/bin/env bash
# Build and cache the test rootfs fixtures without Docker.
#
#   build-test-rootfs.sh [busybox|debian|all]     (default: all)
#
# busybox: /bin/busybox from Debian's busybox-static with every applet as a link in /bin,
#          /etc/passwd and /etc/group (root, nobody), empty /proc /dev /sys, /tmp (1777), /root.
#          No bash, no python.
# debian:  debootstrap --variant=minbase --include=bash,python3 of the host's own suite
#          (VERSION_CODENAME in /etc/os-release) from the mirror configured for apt on this
#          machine (read at run time), with apt caches, lists, docs and man pages removed.
#
# Cache: ${ENVBOX_TEST_ROOTFS_DIR:-/var/cache/envbox-test-rootfs}/{busybox,debian}.
# Each rootfs is built in a temp dir beside its final place and renamed into place only when
# complete; a stamp file (.NAME.stamp, outside the rootfs) records the script version, and a
# missing or different stamp means "rebuild". A lock serialises concurrent callers. A second run
# with a valid cache is instant. Prints the rootfs path(s) on stdout; progress goes to stderr.
#
# Environment:
#   ENVBOX_TEST_ROOTFS_DIR   cache directory (default /var/cache/envbox-test-rootfs)
#   ENVBOX_DEBIAN_MIRROR     override the mirror found in the apt configuration
#   ENVBOX_DEBIAN_SUITE      override the suite (default: the host's VERSION_CODENAME)
#   ENVBOX_REBUILD=1         rebuild even if the cache is valid
set -euo pipefail

# Bump when the content of a rootfs changes: every cached rootfs is then rebuilt.
SCRIPT_VERSION=1

CACHE_DIR=${ENVBOX_TEST_ROOTFS_DIR:-/var/cache/envbox-test-rootfs}
PROG=${0##*/}

log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() { log "error: $*"; exit 1; }

usage() {
    echo "usage: $PROG [busybox|debian|all]" >&2
    exit 2
}

[[ $(id -u) -eq 0 ]] || die "must run as root (debootstrap, chroot and device ownership need it)"

# ---------------------------------------------------------------------------------------------
# apt dependencies

APT_UPDATED=0
ensure_pkgs() {
    local missing=() p
    for p in "$@"; do
        if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
            missing+=("$p")
        fi
    done
    ((${#missing[@]})) || return 0
    if ((APT_UPDATED == 0)); then
        log "apt-get update"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
        APT_UPDATED=1
    fi
    log "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

# ---------------------------------------------------------------------------------------------
# mounts and temp dirs

# Unmount (lazily, deepest first) everything mounted at or below $1.
umount_below() {
    local dir mnt
    dir=$(realpath -m "$1")
    # /proc/self/mountinfo field 5 is the mount point (octal-escaped: \040 for a space).
    while IFS= read -r mnt; do
        umount -l "$mnt" 2>/dev/null || true
    done < <(awk -v d="$dir" '$5 == d || index($5, d "/") == 1 { print $5 }' /proc/self/mountinfo |
        sort -r)
}

has_mounts_below() {
    local dir
    dir=$(realpath -m "$1")
    awk -v d="$dir" '$5 == d || index($5, d "/") == 1 { found = 1 } END { exit !found }' \
        /proc/self/mountinfo
}

remove_tree() {
    [[ -e $1 ]] || return 0
    umount_below "$1"
    rm -rf --one-file-system -- "$1"
}

CURRENT_TMP=""
cleanup() {
    if [[ -n $CURRENT_TMP ]]; then
        remove_tree "$CURRENT_TMP" || true
        rm -f "$CURRENT_TMP.log"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------------
# host suite and mirror

host_suite() {
    if [[ -n ${ENVBOX_DEBIAN_SUITE:-} ]]; then
        echo "$ENVBOX_DEBIAN_SUITE"
        return
    fi
    local codename
    # shellcheck disable=SC1091
    codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
    [[ -n $codename ]] || die "no VERSION_CODENAME in /etc/os-release; set ENVBOX_DEBIAN_SUITE"
    echo "$codename"
}

# Print "URI<TAB>SIGNED_BY" for the first apt source that serves exactly suite $1 (so the main
# archive, never the -security or -updates one), reading one-line .list files and deb822
# .sources files. Signed-By may be empty.
apt_source_for_suite() {
    local suite=$1 f
    local files=()
    [[ -f /etc/apt/sources.list ]] && files+=(/etc/apt/sources.list)
    for f in /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [[ -f $f ]] && files+=("$f")
    done
    ((${#files[@]})) || return 1
    for f in "${files[@]}"; do
        if [[ $f == *.sources ]]; then
            # deb822: stanzas separated by blank lines; fields may be folded (continuation
            # lines start with a space) and comments start with '#'.
            awk -v want="$suite" '
                function flush() {
                    if (types ~ /(^|[ \t])deb([ \t]|$)/ && enabled !~ /^[ \t]*no/ && uris != "") {
                        n = split(suites, s, /[ \t]+/)
                        for (i = 1; i <= n; i++) if (s[i] == want) {
                            split(uris, u, /[ \t]+/)
                            gsub(/^[ \t]+|[ \t]+$/, "", signed)
                            if (signed ~ /-----BEGIN/) signed = ""
                            printf "%s\t%s\n", u[1], signed
                            found = 1
                            exit
                        }
                    }
                    types = uris = suites = signed = enabled = ""; last = ""
                }
                /^#/ { next }
                /^[ \t]*$/ { flush(); next }
                /^[ \t]/ { next_field(last); next }
                {
                    key = tolower(substr($0, 1, index($0, ":") - 1))
                    v = substr($0, index($0, ":") + 1)
                    gsub(/^[ \t]+|[ \t]+$/, "", v)
                    last = key
                    if (key == "types") types = v
                    else if (key == "uris") uris = v
                    else if (key == "suites") suites = v
                    else if (key == "signed-by") signed = v
                    else if (key == "enabled") enabled = tolower(v)
                }
                function next_field(k) {
                    if (k == "suites") suites = suites " " $0
                    else if (k == "uris") uris = uris " " $0
                    else if (k == "types") types = types " " $0
                }
                END { if (!found) flush() }
            ' "$f" | head -n1
        else
            # one-line style: deb [ options ] URI SUITE COMPONENT...
            awk -v want="$suite" '
                /^[ \t]*deb[ \t]/ {
                    line = $0
                    sub(/#.*/, "", line)
                    signed = ""
                    if (match(line, /\[[^]]*\]/)) {
                        opts = substr(line, RSTART + 1, RLENGTH - 2)
                        if (match(opts, /signed-by=[^ \t]+/))
                            signed = substr(opts, RSTART + 10, RLENGTH - 10)
                        line = substr(line, 1, index(line, "[") - 1) substr(line, index(line, "]") + 1)
                    }
                    n = split(line, w, /[ \t]+/)
                    j = 0
                    for (i = 1; i <= n; i++) if (w[i] != "") a[++j] = w[i]
                    if (j >= 3 && a[3] == want) { printf "%s\t%s\n", a[2], signed; exit }
                }
            ' "$f"
        fi
    done | head -n1 | grep . # fail if nothing matched
}

# ---------------------------------------------------------------------------------------------
# the two rootfs

build_busybox() {
    local root=$1 bb applet
    ensure_pkgs busybox-static
    bb=$(dpkg -L busybox-static | grep -E '/bin/busybox$' | head -n1)
    [[ -x $bb ]] || die "busybox-static is installed but its binary was not found"

    mkdir -p "$root"/{bin,etc,proc,dev,sys,tmp,root,usr/bin,var/tmp}
    chmod 1777 "$root/tmp" "$root/var/tmp"
    chmod 0700 "$root/root"
    install -m 0755 "$bb" "$root/bin/busybox"
    while IFS= read -r applet; do
        case $applet in
        "" | busybox | */*) continue ;;
        esac
        ln -s busybox "$root/bin/$applet"
    done < <("$root/bin/busybox" --list)
    # common absolute paths used by scripts (#!/usr/bin/env, /usr/bin/test ...)
    ln -s ../../bin/busybox "$root/usr/bin/env"
    # /sbin and /usr/sbin point to /bin so tools looked up there are found too
    ln -s bin "$root/sbin"
    ln -s ../bin "$root/usr/sbin"

    cat >"$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
    cat >"$root/etc/group" <<'EOF'
root:x:0:
nobody:x:65534:
EOF
    chmod 0644 "$root/etc/passwd" "$root/etc/group"
    printf '127.0.0.1\tlocalhost\n::1\tlocalhost\n' >"$root/etc/hosts"
    : >"$root/etc/resolv.conf"
    echo busybox >"$root/etc/hostname"

    # sanity check before it is published
    local out
    out=$(chroot "$root" /bin/sh -c 'echo ok; ls / >/dev/null; id -un; seq 3 | wc -l')
    [[ $out == $'ok\nroot\n3' ]] || die "busybox rootfs sanity check failed: $out"
    [[ ! -e $root/bin/bash && ! -e $root/usr/bin/python3 ]] || die "busybox rootfs has bash/python"
}

build_debian() {
    local root=$1 suite src mirror signed start end
    ensure_pkgs debootstrap debian-archive-keyring
    suite=$(host_suite)
    if [[ -n ${ENVBOX_DEBIAN_MIRROR:-} ]]; then
        mirror=$ENVBOX_DEBIAN_MIRROR
        signed=""
    else
        src=$(apt_source_for_suite "$suite") ||
            die "no apt source for suite '$suite' in /etc/apt/sources.list{,.d/*.list,.d/*.sources}; set ENVBOX_DEBIAN_MIRROR"
        mirror=${src%%$'\t'*}
        signed=${src#*$'\t'}
    fi
    local args=(--variant=minbase "--include=bash,python3")
    if [[ -n $signed && -f $signed ]]; then
        args+=("--keyring=$signed")
    fi

    # debootstrap downloads with wget: pass on apt's proxy if one is configured and none is set
    local proxy
    proxy=$(apt-config dump --format '%v' Acquire::http::Proxy 2>/dev/null || true)
    if [[ -n $proxy && $proxy != DIRECT && -z ${http_proxy:-} ]]; then
        export http_proxy=$proxy
    fi
    proxy=$(apt-config dump --format '%v' Acquire::https::Proxy 2>/dev/null || true)
    if [[ -n $proxy && $proxy != DIRECT && -z ${https_proxy:-} ]]; then
        export https_proxy=$proxy
    fi

    log "debootstrap ${args[*]} $suite <rootfs> $mirror"
    start=$(date +%s)
    if ! debootstrap "${args[@]}" "$suite" "$root" "$mirror" >"$root.log" 2>&1; then
        tail -n 30 "$root.log" >&2 || true
        [[ -f $root/debootstrap/debootstrap.log ]] && tail -n 30 "$root/debootstrap/debootstrap.log" >&2
        rm -f "$root.log"
        die "debootstrap failed"
    fi
    rm -f "$root.log"
    end=$(date +%s)
    log "debootstrap took $((end - start)) s"
    umount_below "$root" # debootstrap unmounts /proc and /sys itself; be sure

    # keep it small: apt caches and lists, logs, docs, man pages
    chroot "$root" apt-get clean >/dev/null 2>&1 || true
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin \
        "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/debconf/*-old \
        "$root"/var/log/*.log "$root"/var/log/apt/* \
        "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
        "$root"/debootstrap
    find "$root/usr/lib" -name __pycache__ -prune -exec rm -rf {} + 2>/dev/null || true
    : >"$root/etc/resolv.conf"
    echo debian >"$root/etc/hostname"

    local out
    # shellcheck disable=SC2016 # expanded by the rootfs's bash, not here
    out=$(chroot "$root" /bin/bash -c \
        '[[ -n $BASH_VERSION ]] && python3 -c "import json, asyncio, http.server, socket, inspect, traceback; print(\"ok\")"')
    [[ $out == ok ]] || die "debian rootfs sanity check failed: $out"
    if has_mounts_below "$root"; then
        die "mounts left below $root after debootstrap"
    fi
}

# ---------------------------------------------------------------------------------------------
# cache management

stamp_for() {
    local kind=$1
    case $kind in
    busybox) echo "envbox-test-rootfs busybox v$SCRIPT_VERSION" ;;
    debian) echo "envbox-test-rootfs debian v$SCRIPT_VERSION suite=$(host_suite)" ;;
    esac
}

ensure_rootfs() {
    local kind=$1 final stampf want
    final=$CACHE_DIR/$kind
    stampf=$CACHE_DIR/.$kind.stamp
    want=$(stamp_for "$kind")

    mkdir -p "$CACHE_DIR"
    local lockfd
    exec {lockfd}>"$CACHE_DIR/.$kind.lock"
    flock "$lockfd"

    if [[ ${ENVBOX_REBUILD:-0} != 1 && -d $final && -f $stampf && $(<"$stampf") == "$want" ]]; then
        exec {lockfd}>&-
        echo "$final"
        return
    fi

    # leftovers of interrupted builds (we hold the lock, so nobody else is using them)
    local old
    for old in "$CACHE_DIR/.$kind".tmp.* "$CACHE_DIR/.$kind".old.*; do
        [[ -e $old ]] || continue
        log "removing leftover $old"
        remove_tree "$old"
        rm -f "$old.log"
    done

    log "building $kind rootfs in $final"
    local tmp t0 t1
    tmp=$(mktemp -d "$CACHE_DIR/.$kind.tmp.XXXXXX")
    CURRENT_TMP=$tmp
    chmod 0755 "$tmp"
    t0=$(date +%s)
    "build_$kind" "$tmp"
    t1=$(date +%s)

    # publish: drop the stamp, swap the directories, write the stamp last
    rm -f "$stampf"
    if [[ -e $final ]]; then
        old=$CACHE_DIR/.$kind.old.$$
        mv -T "$final" "$old"
        mv -T "$tmp" "$final"
        CURRENT_TMP=""
        remove_tree "$old"
    else
        mv -T "$tmp" "$final"
        CURRENT_TMP=""
    fi
    echo "$want" >"$stampf.new"
    mv -f "$stampf.new" "$stampf"
    sync -f "$final" 2>/dev/null || true
    exec {lockfd}>&-
    log "$kind rootfs ready in $((t1 - t0)) s: $final ($(du -sh --apparent-size "$final" | cut -f1))"
    echo "$final"
}

what=${1:-all}
(($# <= 1)) || usage
case $what in
busybox | debian) ensure_rootfs "$what" ;;
all)
    ensure_rootfs busybox
    ensure_rootfs debian
    ;;
-h | --help) usage ;;
*) usage ;;
esac
