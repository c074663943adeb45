"""glibc's mmap threshold, fixed once per process by the package (`allocator.py`)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.unit, pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")]

PROBE = "import amplitude_assets; from amplitude_assets import allocator; print(allocator._tuned, allocator.tune())"


def run(env: dict) -> str:
    return subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True).stdout.split()


def test_importing_the_package_fixes_the_threshold():
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    assert run(env) == ["True", "True"]


def test_an_operators_own_threshold_is_left_alone():
    assert run({**os.environ, "MALLOC_MMAP_THRESHOLD_": "1048576"}) == ["False", "False"]
