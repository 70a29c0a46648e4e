"""The dependency lock this installation ships (``viadk8s/requirements.lock``, package data).

Why: ``result.json`` records the lock's sha256, so two results say whether they ran on the same
dependency set (a March and a June run of a benchmark differ only if someone changed the lock).
The image installs exactly this file; ``make install`` installs ``requirements-dev.lock``, which pins
the same versions plus the development tools (``make lock`` writes both).
"""

from __future__ import annotations

import hashlib
from functools import cache
from importlib import resources

LOCK = "requirements.lock"


@cache
def lock_sha256() -> str:
    """sha256 (hex) of the lock shipped with this package."""
    return hashlib.sha256((resources.files("viadk8s") / LOCK).read_bytes()).hexdigest()
