"""`make demo`: Azurite with data under .demo/, the last 24 closed hours exported, then the UI.

Everything it starts stops on Ctrl-C. State persists in .demo/, so a second run starts
fast and keeps the run history; `make demo-clean` resets it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / ".demo"
AZURITE = ROOT / "node_modules" / ".bin" / "azurite-blob"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
UI_PORT = int(os.environ.get("DEMO_UI_PORT", "3000"))
AZURITE_PORT = int(os.environ.get("DEMO_AZURITE_PORT", "10000"))
DAGSTER_YAML = """\
# The demo instance: runs go through the queue, as in production.
run_queue:
  max_concurrent_runs: 2
  tag_concurrency_limits:
    - key: "dagster/backfill"
      limit: 2
telemetry:
  enabled: false
"""


def say(message: str) -> None:
    print(f"\033[1m==> {message}\033[0m", flush=True)


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_for(port: int, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not port_open(port):
        if time.monotonic() > deadline:
            sys.exit(f"{what} did not start on 127.0.0.1:{port}")
        time.sleep(0.2)


def demo_env() -> dict[str, str]:
    """The demo's settings; AMPLITUDE_START is fixed at the first run so partitions stay put."""
    DEMO.mkdir(exist_ok=True)
    saved = DEMO / "demo.env"
    if not saved.exists():
        start = (datetime.now(timezone.utc) - timedelta(days=3)).replace(hour=0, minute=0, second=0, microsecond=0)
        saved.write_text(f"AMPLITUDE_START={start:%Y-%m-%d-%H:%M}\n")
    values = dict(line.split("=", 1) for line in saved.read_text().split() if "=" in line)
    home = DEMO / "dagster_home"
    home.mkdir(exist_ok=True)
    (home / "dagster.yaml").write_text(DAGSTER_YAML)
    env = {
        **os.environ,
        **values,
        "DAGSTER_HOME": str(home),
        "AZURE_STORAGE_CONNECTION_STRING": (
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
            f"AccountKey={ACCOUNT_KEY};BlobEndpoint=http://127.0.0.1:{AZURITE_PORT}/devstoreaccount1;"
        ),
        "AZURE_CREATE_CONTAINERS": "true",
    }
    env.pop("AMPLITUDE_SOURCE", None)  # the demo uses the synthetic source
    return env


def last_closed_hours(delay_minutes: int = 10, count: int = 24) -> tuple[str, str]:
    now = datetime.now(timezone.utc)
    end = (now - timedelta(hours=1, minutes=delay_minutes)).replace(minute=0, second=0, microsecond=0)
    start = end - timedelta(hours=count - 1)
    return f"{start:%Y-%m-%d-%H:%M}", f"{end:%Y-%m-%d-%H:%M}"


def print_tree(env: dict[str, str]) -> None:
    from azure.storage.blob import BlobServiceClient

    service = BlobServiceClient.from_connection_string(env["AZURE_STORAGE_CONNECTION_STRING"])
    for container in service.list_containers():
        client = service.get_container_client(container.name)
        folders: dict[str, list] = {}
        for blob in client.list_blobs():
            folder = blob.name.rsplit("/", 1)[0] if "/" in blob.name else ""
            folders.setdefault(folder, []).append(blob)
        print(f"\n  container {container.name}/")
        for folder, items in sorted(folders.items()):
            parts = [b for b in items if b.name.endswith(".json.gz")]
            markers = [b for b in items if b.name.endswith("_complete")]
            size = sum(b.size for b in items)
            print(f"    {folder + '/':<40} {len(parts):>4} .json.gz  {len(markers):>4} markers  {size / 1e6:8.2f} MB")
            for b in sorted(parts, key=lambda b: b.name)[-2:]:
                print(f"      e.g. {b.name}")


def main() -> int:
    env = demo_env()
    children: list[subprocess.Popen] = []

    def stop(*_):
        for child in reversed(children):
            if child.poll() is None:
                child.terminate()
        for child in children:
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.kill()

    signal.signal(signal.SIGTERM, lambda *a: (stop(), sys.exit(0)))
    try:
        if port_open(AZURITE_PORT):
            sys.exit(f"127.0.0.1:{AZURITE_PORT} is in use; stop what runs there or set DEMO_AZURITE_PORT")
        say(f"starting Azurite on 127.0.0.1:{AZURITE_PORT} (data in .demo/azurite)")
        (DEMO / "azurite").mkdir(exist_ok=True)
        children.append(subprocess.Popen(
            [str(AZURITE), "--blobHost", "127.0.0.1", "--blobPort", str(AZURITE_PORT),
             "--location", str(DEMO / "azurite"), "--skipApiVersionCheck", "--disableTelemetry", "--loose",
             "--silent"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))
        wait_for(AZURITE_PORT, "Azurite")

        start, end = last_closed_hours()
        say(f"exporting the last 24 closed hours ({start} .. {end}) from the synthetic source")
        code = subprocess.call(
            [sys.executable, "-m", "amplitude_assets", "backfill", "--start", start, "--end", end], env=env, cwd=ROOT
        )
        if code != 0:
            print("some hours did not export; the UI shows the failed runs", file=sys.stderr)

        say("what landed in the container")
        print_tree(env)

        say(f"serving the Dagster UI on http://127.0.0.1:{UI_PORT} (webserver and daemon; Ctrl-C stops everything)")
        print(
            "  Open Assets > events to see the materialized hours; Automation > hourly_export_sensor to turn\n"
            "  on the hourly sync; Materialize on the asset page to launch a range backfill.\n",
            flush=True,
        )
        dagster = ROOT / ".venv" / "bin" / "dagster"
        children.append(subprocess.Popen(
            [str(dagster), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(UI_PORT)], env=env, cwd=ROOT
        ))
        children[-1].wait()
    except KeyboardInterrupt:
        print("\nstopping", flush=True)
    finally:
        stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
