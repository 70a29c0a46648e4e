"""The lock files: every declared dependency is pinned exactly, the image's runtime lock is the
dev lock's subset with the same versions, this environment was installed from it, and results
record the sha256 of the lock the package ships."""

from __future__ import annotations

import hashlib
import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from viadk8s.lock import lock_sha256

ROOT = Path(__file__).resolve().parents[1]
RUNTIME = ROOT / "viadk8s" / "requirements.lock"
DEV = ROOT / "requirements-dev.lock"


def pins(path: Path) -> dict[str, str]:
    found: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            match = re.fullmatch(r"([A-Za-z0-9._-]+)==(\S+)", line.strip())
            assert match, f"{path.name}: {line!r} is not an exact NAME==VERSION pin"
            found[canonicalize_name(match.group(1))] = match.group(2)
    return found


def declared(*extras: str) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    found = [Requirement(r) for r in project["dependencies"]]
    for extra in extras:
        found += [Requirement(r) for r in project["optional-dependencies"][extra]]
    return found


def test_every_declared_dependency_is_pinned_within_its_range() -> None:
    """A dependency added to pyproject.toml without `make lock` fails here, not in a later install."""
    for path, extras in ((RUNTIME, ("server",)), (DEV, ("server", "dev"))):
        locked = pins(path)
        for requirement in declared(*extras):
            name = canonicalize_name(requirement.name)
            assert name in locked, f"{requirement} is not in {path.name}: run `make lock`"
            assert requirement.specifier.contains(locked[name], prereleases=True), (
                f"{path.name} pins {name}=={locked[name]}, outside {requirement}"
            )


def test_runtime_lock_is_the_dev_lock_subset() -> None:
    runtime, dev = pins(RUNTIME), pins(DEV)
    assert runtime and {name: dev.get(name) for name in runtime} == runtime
    dev_only = {canonicalize_name(r.name) for r in declared("dev")} - {canonicalize_name(r.name) for r in declared("server")}
    assert not dev_only & set(runtime), "development tools must stay out of the image's lock"


def test_environment_is_installed_from_the_lock() -> None:
    """What `make install` (and CI) installed is what the runtime lock pins (local version labels aside)."""
    wrong = {}
    for name, version in pins(RUNTIME).items():
        try:
            installed = metadata.version(name).split("+")[0]
        except metadata.PackageNotFoundError:
            installed = "missing"
        if installed != version:
            wrong[name] = f"{installed} (lock: {version})"
    assert not wrong, f"installed packages differ from the lock, run `make install`: {wrong}"


def test_results_record_the_shipped_lock() -> None:
    assert lock_sha256() == hashlib.sha256(RUNTIME.read_bytes()).hexdigest()
    assert RUNTIME.name in (ROOT / "pyproject.toml").read_text()  # package data: installed copies ship it too
