#!/usr/bin/env bash
# Build the ramraft container image with podman, offline-friendly.
#
#   scripts/build-image.sh [--base IMAGE] [--tag TAG] [--no-smoke] [--print-tag]
#
# The tag defaults to localhost/ramraft:VERSION, VERSION being pyproject.toml's
# [project] version (the one version source; k8s/kustomization.yaml's newTag
# must equal it, tests/packaging/test_version.py checks). --print-tag prints the
# tag and builds nothing.
#
# Steps:
#  1. Base image: IMAGE if given (must be local or pullable). Otherwise
#     python:3.11-slim if it is already local or can be pulled; otherwise a
#     local base, localhost/ramraft-base:bookworm, made once with debootstrap
#     (Debian bookworm minbase + python3, python3-venv) and `podman import`.
#  2. Wheels for the package and all its dependencies are built on the host
#     (`pip wheel`, which uses the host's package index settings) into
#     build/wheels, so the build needs no network inside the container.
#  3. podman build --runtime runc (lowered ulimits, see PODMAN_FLAGS) -f Containerfile .
#  4. Smoke test: runs read-only, as uid 10001, and finds `ramraft` on PATH.
#
# Needs: podman, runc, debootstrap (apt-get install -y podman runc debootstrap).
# Environment: RAMRAFT_BASE_ROOTFS (where the debootstrap rootfs is cached,
# default /var/tmp/ramraft-base-rootfs), DEBIAN_MIRROR (default
# http://deb.debian.org/debian).
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
TAG=localhost/ramraft:$VERSION
PRINT_TAG=0
BASE=""
SMOKE=1
LOCAL_BASE=localhost/ramraft-base:bookworm
ROOTFS=${RAMRAFT_BASE_ROOTFS:-/var/tmp/ramraft-base-rootfs}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# podman gives root containers RLIMIT_NOFILE 1048576 and RLIMIT_NPROC 32768 by
# default; on this machine (shell hard limits: nofile 20000, nproc 96365) runc
# then fails with "error setting rlimit type 7" (NOFILE), and with the
# nofile limit lowered, "type 6" (NPROC): "operation not permitted". So every
# build and run sets both explicitly.
PODMAN_FLAGS=(--runtime runc --ulimit nofile=1024:1024 --ulimit nproc=4096:4096)

while [ $# -gt 0 ]; do
  case "$1" in
    --base) BASE=$2; shift 2 ;;
    --tag) TAG=$2; shift 2 ;;
    --no-smoke) SMOKE=0; shift ;;
    --print-tag) PRINT_TAG=1; shift ;;
    -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

if [ "$PRINT_TAG" = 1 ]; then
  printf '%s\n' "$TAG"
  exit 0
fi

say() { printf '==> %s\n' "$*" >&2; }

have_image() { podman image exists "$1"; }

make_local_base() {
  if have_image "$LOCAL_BASE"; then
    say "using cached base $LOCAL_BASE"
    return
  fi
  command -v debootstrap >/dev/null || { echo "debootstrap missing: apt-get install -y debootstrap" >&2; exit 1; }
  if [ ! -x "$ROOTFS/usr/bin/python3" ]; then
    say "debootstrap bookworm into $ROOTFS (a few minutes, once)"
    rm -rf "$ROOTFS"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
      bookworm "$ROOTFS" "$MIRROR" >&2
  fi
  # Drop what an image does not need: apt caches and lists, the host's resolver.
  rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/* \
         "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/*
  : > "$ROOTFS/etc/resolv.conf"
  say "podman import $ROOTFS as $LOCAL_BASE"
  tar --numeric-owner -C "$ROOTFS" -c . | podman import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' - "$LOCAL_BASE" >/dev/null
}

if [ -z "$BASE" ]; then
  if have_image python:3.11-slim || timeout 60 podman pull -q docker.io/library/python:3.11-slim >/dev/null 2>&1; then
    BASE=docker.io/library/python:3.11-slim
  else
    say "python:3.11-slim is neither local nor pullable; building a local base"
    make_local_base
    BASE=$LOCAL_BASE
  fi
fi
say "base image: $BASE"

say "building wheels into build/wheels"
rm -rf build/wheels
mkdir -p build/wheels
python3 -m pip wheel --quiet --wheel-dir build/wheels . setuptools wheel >&2

say "podman build -t $TAG"
podman build "${PODMAN_FLAGS[@]}" \
  --build-arg BASE_IMAGE="$BASE" \
  --build-arg PIP_INSTALL_OPTS="--no-index --find-links=/src/build/wheels" \
  -f Containerfile -t "$TAG" . >&2

if [ "$SMOKE" = 1 ]; then
  say "smoke test: read-only root, uid 10001, ramraft on PATH, packages import"
  out=$(podman run --rm "${PODMAN_FLAGS[@]}" --read-only --tmpfs /tmp --user 10001:10001 \
    --cap-drop ALL --security-opt no-new-privileges --entrypoint /bin/sh "$TAG" -c \
    'id -u; command -v ramraft; python3 -c "import ramraft.server.node, ramraft.client, grpc; print(\"ok\")"')
  printf '%s\n' "$out" >&2
  [ "$(printf '%s\n' "$out" | sed -n 1p)" = 10001 ] || { echo "smoke: not uid 10001" >&2; exit 1; }
  [ "$(printf '%s\n' "$out" | sed -n 2p)" = /opt/ramraft/bin/ramraft ] || { echo "smoke: ramraft not on PATH" >&2; exit 1; }
  [ "$(printf '%s\n' "$out" | sed -n 3p)" = ok ] || { echo "smoke: imports failed" >&2; exit 1; }
fi
say "built $TAG ($(podman image inspect --format '{{.Size}}' "$TAG") bytes)"
printf '%s\n' "$TAG"
