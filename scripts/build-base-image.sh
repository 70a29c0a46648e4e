#!/usr/bin/env bash
# Build the local test base image with podman and print its name: Debian bookworm minbase
# (debootstrap) + Python 3.11 in /opt/venv + the torch/torchvision that viadk8s/requirements.lock pins.
# Why: no container registry is reachable here, so the CUDA PyTorch base cannot be pulled; the
# Dockerfile builds the same way on this one (make image-local). Needs root, podman, debootstrap.
#
# Cached: the name's tag hashes this script, base.Containerfile and the lock's torch stack, so a
# second call with an unchanged lock only prints the name. Env: DEBIAN_MIRROR, SUITE.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
lock="$here/../viadk8s/requirements.lock"
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
suite=${SUITE:-bookworm}
for tool in podman debootstrap; do
    command -v "$tool" >/dev/null || { echo "error: $tool is missing (apt-get install podman buildah debootstrap runc)" >&2; exit 3; }
done
[ -f "$lock" ] || { echo "error: $lock is missing (make lock)" >&2; exit 2; }

stack=$(grep -E '^(torch|torchvision|triton|nvidia-[a-z0-9-]+|cuda-[a-z0-9-]+)==' "$lock")
key=$( { cat "$0" "$here/base.Containerfile"; echo "$suite $stack"; } | sha256sum | cut -c1-12)
minbase="localhost/viadk8s-minbase:$suite"
base="localhost/viadk8s-base:$key"
if podman image exists "$base"; then
    echo "$base"
    exit 0
fi

work=$(mktemp -d "${TMPDIR:-/var/tmp}/viadk8s-base.XXXXXX")
trap 'rm -rf "$work"' EXIT
if ! podman image exists "$minbase"; then
    echo "debootstrap $suite (minbase + python3) from $mirror" >&2
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        "$suite" "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 \
        || { tail -20 "$work/debootstrap.log" >&2; echo "error: debootstrap failed (log above)" >&2; exit 3; }
    rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/lib/apt/lists/"*
    tar -C "$work/rootfs" -c . | podman import --change 'CMD ["/bin/bash"]' - "$minbase" >/dev/null
    rm -rf "$work/rootfs"
fi
mkdir "$work/context"
cp "$lock" "$work/context/requirements.lock"
mapfile -t pip_opts < <(python3 "$here/pip-build-opts.py" "$work/pip")
echo "building $base on $minbase" >&2
podman build --isolation chroot --network host "${pip_opts[@]}" --build-arg "MINBASE=$minbase" \
    -f "$here/base.Containerfile" -t "$base" "$work/context" >&2
echo "$base"
