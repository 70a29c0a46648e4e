#!/usr/bin/env bash
# Write the two lock files from pyproject.toml with uv (make lock), for CPython 3.11 on Linux x86_64:
#   requirements-dev.lock       what `make install` and CI install: runtime + server + dev extras
#   viadk8s/requirements.lock   the runtime + server subset the image installs, pinned exactly as in
#                               the dev lock (package data: result.json records its sha256)
# Existing pins are kept (uv prefers the versions already in the output file), so the lock only
# moves when pyproject.toml asks for it; UPGRADE=1 moves every package to its newest allowed version.
# This machine's pip set-up (constraints, local indexes, find-links) is passed to uv, so the lock
# resolves against what pip here may install. Env: UV (default .venv/bin/uv), PYTHON (its pip).
set -euo pipefail
cd "$(dirname "$0")/.."
uv=${UV:-.venv/bin/uv}
python=${PYTHON:-.venv/bin/python}
conf=$("$python" -m pip config list 2>/dev/null || true)
values() { printf '%s\n' "$conf" | sed -n "s/^[^=]*[.]$1='\(.*\)'\$/\1/p" | tr ' ' '\n' | sort -u; }
sources=()
for c in $(values constraint); do sources+=(--constraint "$c"); done
for u in $(values extra-index-url); do sources+=(--extra-index-url "$u"); done
for f in $(values find-links); do sources+=(--find-links "$f"); done
common=(--python-version 3.11 --python-platform x86_64-manylinux_2_28 --index-strategy unsafe-best-match
        --custom-compile-command "make lock" --quiet "${sources[@]}")
[ "${UPGRADE:-0}" = 1 ] && common+=(--upgrade)
"$uv" pip compile pyproject.toml --extra server --extra dev "${common[@]}" -o requirements-dev.lock
"$uv" pip compile pyproject.toml --extra server --constraint requirements-dev.lock "${common[@]}" -o viadk8s/requirements.lock
