#!/usr/bin/env python3
"""Options that give pip inside a ``podman build`` this machine's pip set-up, one per line.

Why: a machine whose pip reads local package folders, a constraints file or a private CA bundle
(``pip config list``) cannot build the image without them (pip would fail on TLS, or download
gigabytes the machine already holds). The merged configuration is written to OUT_DIR/pip.conf and
handed to the build as PIP_CONFIG_FILE; every local path it names is mounted read-only at the same
path (a ``file://.../simple`` index with its parent, where PEP 503 indexes keep their files).
Prints nothing when pip has no configuration: a build with plain internet access needs none.
Usage: pip-build-opts.py OUT_DIR   (the pip of the Python running this script is asked)
"""

from __future__ import annotations

import configparser
import os
import subprocess
import sys
from pathlib import Path

MOUNT_DIR = "/run/viadk8s-pip"  # where the build sees OUT_DIR
PATH_KEYS = {"cert", "client-cert", "constraint", "build-constraint", "find-links", "index-url", "extra-index-url"}


def settings() -> dict[str, dict[str, str]]:
    """pip's effective settings by section; PIP_* variables (``:env:``) override the files' ``global``."""
    listing = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=False)
    sections: dict[str, dict[str, str]] = {}
    env: dict[str, str] = {}
    for line in listing.stdout.splitlines():
        key, _, value = line.partition("=")
        section, _, name = key.rpartition(".")
        value = value.strip().strip("'\"")
        if section == ":env:":
            env[name] = value
        elif section and name:
            sections.setdefault(section, {})[name] = value
    if env:
        sections.setdefault("global", {}).update(env)
    return sections


def local_paths(sections: dict[str, dict[str, str]]) -> list[str]:
    """Existing absolute paths named by path-like options (file:// URLs included), deduplicated."""
    found: list[str] = []
    for options in sections.values():
        for name, value in options.items():
            if name not in PATH_KEYS:
                continue
            for item in value.split():
                is_url = item.startswith("file://")
                path = item.removeprefix("file://")
                if is_url and "index-url" in name and Path(path).name == "simple":
                    path = str(Path(path).parent)
                if os.path.isabs(path) and os.path.exists(path) and path not in found:
                    found.append(path)
    return found


def main(out_dir: str) -> None:
    sections = settings()
    if not sections:
        return
    config = configparser.ConfigParser(interpolation=None)
    config.read_dict(sections)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "pip.conf.tmp"
    with tmp.open("w") as handle:
        config.write(handle)
    tmp.replace(out / "pip.conf")
    print(f"--volume={out.resolve()}:{MOUNT_DIR}:ro")
    print(f"--build-arg=PIP_CONFIG_FILE={MOUNT_DIR}/pip.conf")
    for path in local_paths(sections):
        print(f"--volume={path}:{path}:ro")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: pip-build-opts.py OUT_DIR")
    main(sys.argv[1])
