"""What a result was made with: package versions and medtl's source commit (recorded in every run's
metrics.json; the model card quotes it under "how to reproduce")."""

from __future__ import annotations

import subprocess
from importlib import metadata
from pathlib import Path

PACKAGES = ("medtl", "torch", "torchvision", "numpy")


def environment(when: str) -> dict:
    """Package versions and medtl's source commit now; `when` says when that was (e.g. "when the run was
    trained")."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return {"versions": versions, "commit": _commit(), "when": when}


def _commit() -> str | None:
    """medtl's git commit when it runs from a checkout (an installed wheel has none: None)."""
    source = Path(__file__).resolve().parents[2]
    if not (source / ".git").exists():
        return None
    try:
        done = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None
