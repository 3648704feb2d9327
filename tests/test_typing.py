"""The package's annotations: mypy --strict passes on it (every module,
the verify workload's too) and on examples/; the Reader's documented
methods are what type checkers and help() see; and every subpackage is
built into the wheel."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import pymemcg

ROOT = Path(__file__).resolve().parent.parent


def test_mypy_strict_passes() -> None:
    # the configuration (strict, files, overrides) is pyproject.toml's
    run = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental",
                          "--cache-dir", os.devnull],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr


def test_py_typed_is_shipped() -> None:
    assert (Path(pymemcg.__file__).parent / "py.typed").is_file()


def test_reader_read_is_the_documented_method(bpf_ok: bool) -> None:
    # bound on the instance, the backend's methods would hide these from
    # help() and type checkers, and outlive close()
    with pymemcg.Reader(stats=["usage"], backend="bpf", shared_pins=False) as reader:
        for name in ("read", "read_many"):
            assert name not in vars(reader), f"Reader.{name} is rebound on the instance"
            assert getattr(reader, name).__func__ is getattr(pymemcg.Reader, name)


def test_every_package_is_built_into_the_wheel() -> None:
    # pyproject.toml lists the packages setuptools builds in: a subpackage
    # missing there (pymemcg.parity, say) is missing from wheel and sdist
    # installs, though every test of the checkout passes
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    with open(ROOT / "pyproject.toml", "rb") as f:
        listed = set(tomllib.load(f)["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts)
             for p in (ROOT / "pymemcg").rglob("__init__.py")}
    assert "pymemcg.parity" in found and found == listed, (found, listed)
