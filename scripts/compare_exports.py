"""Export the same hours with two checkouts of the project and compare every blob's bytes.

A refactor must not change what readers see. This exports a fixed set of hours from the
synthetic source, through the command line users run, once with a baseline commit and once
with the working tree, each into its own container of one Azurite:
  1. a range across a day boundary (both assets);
  2. a re-export of an hour inside it (it replaces the hour's parts and marker);
  3. a re-export of an earlier hour than the latest merged IDs (an out-of-order merged-IDs
     hour: the hours after it become stale, and are left as they are).
Then every blob name, its bytes and its metadata must be the same, markers compared without
their export time. Lock blobs are left out (they only exist while an hour is written).

    .venv/bin/python -m scripts.compare_exports --baseline <commit>

Exit status 0 when every blob is the same, 1 otherwise (the differences are printed).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from azure.storage.blob import BlobServiceClient

from scripts.topology import ROOT, connection_string, free_port, start_azurite
STEPS = (
    ("a range across a day boundary", "2024-01-01-21:00", "2024-01-02-02:00"),
    ("a re-export of an hour inside it", "2024-01-01-23:00", "2024-01-01-23:00"),
    ("an earlier hour than the latest merged IDs, again", "2024-01-02-00:00", "2024-01-02-00:00"),
)


def export(checkout: Path, container: str, port: int, home: Path) -> None:
    """The steps, through `python -m amplitude_assets backfill`, with the code of `checkout`."""
    home.mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "TZ": "UTC",
        "PYTHONPATH": str(checkout), "DAGSTER_HOME": str(home),
        "AMPLITUDE_SOURCE": "synthetic", "AMPLITUDE_START": "2024-01-01-00:00",
        "AMPLITUDE_SYNTHETIC_EVENTS_PER_HOUR": "2000", "AMPLITUDE_HOURS_PER_RUN": "4",
        "AZURE_EVENTS_CONTAINER": container, "AZURE_CREATE_CONTAINERS": "true",
        "AZURE_STORAGE_CONNECTION_STRING": connection_string(port),
    }
    for what, start, end in STEPS:
        done = subprocess.run(
            [sys.executable, "-m", "amplitude_assets", "backfill", "--start", start, "--end", end],
            cwd=str(checkout), env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=900,
        )
        if done.returncode != 0:
            raise SystemExit(f"{checkout}: {what} failed\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        print(f"  {checkout.name or checkout}: {what} ({start} .. {end})")


def blobs(service: BlobServiceClient, container: str) -> dict[str, tuple[bytes, dict]]:
    """Every blob but the lock blobs: its bytes (a marker's without its export time) and metadata."""
    client = service.get_container_client(container)
    found = {}
    for blob in client.list_blobs():
        if blob.name.startswith("_locks/") or "/_locks/" in blob.name:
            continue
        data = client.get_blob_client(blob.name).download_blob().readall()
        if blob.name.endswith("_complete"):
            manifest = json.loads(data)
            manifest.pop("exported_at", None)
            data = json.dumps(manifest, sort_keys=True).encode()
        found[blob.name] = (data, dict(client.get_blob_client(blob.name).get_blob_properties().metadata or {}))
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", required=True, help="the commit to compare the working tree with")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="compare-exports-") as work:
        work = Path(work)
        baseline = work / "baseline"
        subprocess.run(["git", "worktree", "add", "--detach", str(baseline), args.baseline],
                       cwd=ROOT, check=True, capture_output=True)
        port = free_port()
        azurite = start_azurite(port, None)
        try:
            print(f"exporting with {args.baseline} and with the working tree")
            export(baseline, "before", port, work / "home-before")
            export(ROOT, "after", port, work / "home-after")
            service = BlobServiceClient.from_connection_string(connection_string(port))
            before, after = blobs(service, "before"), blobs(service, "after")
        finally:
            azurite.kill()
            azurite.wait()
            subprocess.run(["git", "worktree", "remove", "--force", str(baseline)], cwd=ROOT, capture_output=True)
    only_before, only_after = sorted(set(before) - set(after)), sorted(set(after) - set(before))
    different = sorted(n for n in set(before) & set(after) if before[n] != after[n])
    print(f"{len(before)} blobs before, {len(after)} after; {len(only_before)} only before, "
          f"{len(only_after)} only after, {len(different)} different")
    for label, names in (("only before", only_before), ("only after", only_after), ("different", different)):
        for name in names[:20]:
            print(f"  {label}: {name}")
    same = not (only_before or only_after or different)
    print("every blob is the same" if same else "the exports differ")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
