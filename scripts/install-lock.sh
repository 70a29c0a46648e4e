#!/bin/sh
# Install viadk8s/requirements.lock into the image's Python (Dockerfile), keeping the base image's
# torch stack: the base's torch and torchvision must be the versions the lock pins (else exit 2,
# nothing installed), and torch, torchvision, triton, nvidia-* and cuda-* are never reinstalled, so
# the CUDA build the base was made with stays. Everything else is installed exactly as pinned.
set -eu
lock=${1:?usage: install-lock.sh LOCK}
for pkg in torch torchvision; do
    want=$(sed -n "s/^${pkg}==//p" "$lock")
    have=$(python -c "from importlib.metadata import version; print(version('${pkg}').split('+')[0])" 2>/dev/null || echo none)
    if [ "$have" != "$want" ]; then
        echo "error: the base image has ${pkg} ${have}, ${lock} pins ${want}: build on a base with ${pkg} ${want} (BASE_IMAGE) or re-lock (make lock)" >&2
        exit 2
    fi
done
rest=$(mktemp)
grep -E '^[A-Za-z0-9._-]+==' "$lock" | grep -v -E '^(torch|torchvision|triton|nvidia-[a-z0-9-]+|cuda-[a-z0-9-]+)==' >"$rest"
python -m pip install --no-deps --requirement "$rest"
rm "$rest"
