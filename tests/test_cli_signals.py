"""The command-line backfill started with SIGTERM ignored: its output pipe still ends.

Each step mirrors its compute log to the command's stdout and stderr through a `tail -F`
child, which Dagster stops with SIGTERM. A child started with SIGTERM ignored used to hand
that on to every `tail`: they outlived the command and held its pipe open, so
`python -m amplitude_assets backfill ... | tee log` (or a test reading its output) never ended.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT

HOUR = "2020-01-25-03:00"
RUN_TIMEOUT = 420.0  # the command itself: one hour of 200 synthetic events takes ~20 s
EOF_TIMEOUT = 30.0  # after the command has exited, its pipe must end within this

# What a scheduler or a shell hands on: the signals ignored, then the command exec'd in place.
IGNORING = (
    "import os, signal, sys\n"
    "for name in sys.argv[1].split(','):\n"
    "    signal.signal(getattr(signal, name), signal.SIG_IGN)\n"
    "os.execv(sys.executable, [sys.executable, '-m', 'amplitude_assets', *sys.argv[2:]])\n"
)

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")


def tails_of(home: Path) -> list[int]:
    """Pids of the `tail` processes that follow compute logs under this DAGSTER_HOME."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and os.path.basename(argv[0]) == b"tail" and any(str(home).encode() in a for a in argv):
            pids.append(int(entry.name))
    return pids


@pytest.mark.parametrize("ignored", ["SIGTERM", "SIGINT,SIGTERM"])
def test_backfill_output_ends_when_started_with_sigterm_ignored(synthetic_hours, tmp_path, settings_env, ignored):
    home = tmp_path / "home"
    home.mkdir()
    process = subprocess.Popen(
        [sys.executable, "-c", IGNORING, ignored, "backfill", "--start", HOUR, "--end", HOUR],
        cwd=ROOT, env=settings_env(DAGSTER_HOME=home), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,  # one pipe, as `2>&1 | tee log`
    )
    output: list[bytes] = []
    reader = threading.Thread(target=lambda: output.extend(iter(process.stdout.readline, b"")), daemon=True)
    reader.start()
    try:
        returncode = process.wait(timeout=RUN_TIMEOUT)
        exited = time.monotonic()
        reader.join(EOF_TIMEOUT)
        text = b"".join(output).decode(errors="replace")
        left = tails_of(home)
        assert not reader.is_alive(), (
            f"the pipe did not end {EOF_TIMEOUT:.0f}s after the command exited ({returncode}): "
            f"held by tail process(es) {left}\n{text}"
        )
        assert time.monotonic() - exited < EOF_TIMEOUT
        assert not left, f"compute-log tail process(es) {left} outlived the command"
        assert returncode == 0, text
        assert "All 1 hour(s) exported." in text
    finally:
        for pid in tails_of(home):  # what a failure left behind: nothing else ends them
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if process.poll() is None:
            process.kill()
            process.wait()
        reader.join(10)
        process.stdout.close()
