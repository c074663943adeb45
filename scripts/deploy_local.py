"""`make deploy-local`: the production topology on this machine, as plain processes.

PostgreSQL on a free loopback port, the code server (`dagster api grpc`), `dagster-daemon run`
and `dagster-webserver`, with deploy/dagster.yaml and deploy/workspace.yaml as shipped (see
scripts/topology.py). Azure is Azurite on 127.0.0.1, data under .deploy/azurite, unless the
AZURE_* variables (or a .env file) point elsewhere. Ctrl-C stops all of it; a second run
resumes with the same PostgreSQL data, run history and blobs. `make deploy-local-clean`
starts over.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from azure.core.exceptions import ResourceExistsError
from azure.storage.blob import BlobServiceClient

from scripts.topology import ROOT, Postgres, Topology, default_pg_folder, wait_for_port

STATE = ROOT / ".deploy"
AZURITE = ROOT / "node_modules" / ".bin" / "azurite-blob"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
COMPUTE_LOGS_CONTAINER = "dagster-compute-logs"  # deploy/dagster.yaml's compute_logs container
UI_PORT = int(os.environ.get("DEPLOY_UI_PORT", "3000"))
AZURITE_PORT = int(os.environ.get("DEPLOY_AZURITE_PORT", "10000"))


def read_dotenv(path: Path) -> dict[str, str]:
    values = {}
    if path.exists():
        for line in path.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                key, value = line.split("=", 1)
                values[key.strip()] = value.strip().strip("'\"")
    return values


def emulator(port: int) -> str:
    return (f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;")


def main() -> int:
    env = {**os.environ, **read_dotenv(ROOT / ".env")}
    uses_azure = any(env.get(name) for name in ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_ACCOUNT_URL"))
    started: list[subprocess.Popen] = []
    postgres = Postgres(default_pg_folder())
    topology = None

    def stop(*_args) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        if not uses_azure:
            (STATE / "azurite").mkdir(parents=True, exist_ok=True)
            azurite = subprocess.Popen(
                [str(AZURITE), "--blobHost", "127.0.0.1", "--blobPort", str(AZURITE_PORT),
                 "--location", str(STATE / "azurite"), "--skipApiVersionCheck", "--disableTelemetry", "--loose",
                 "--silent"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            )
            started.append(azurite)
            wait_for_port(AZURITE_PORT, process=azurite)
            env["AZURE_STORAGE_CONNECTION_STRING"] = emulator(AZURITE_PORT)
            env.setdefault("AZURE_CREATE_CONTAINERS", "true")
            try:
                BlobServiceClient.from_connection_string(env["AZURE_STORAGE_CONNECTION_STRING"]).create_container(
                    COMPUTE_LOGS_CONTAINER)
            except ResourceExistsError:
                pass
            print(f"==> Azurite on 127.0.0.1:{AZURITE_PORT} (data in .deploy/azurite)")
        print(f"==> PostgreSQL from {postgres.folder}")
        postgres.start()
        print(f"    listening on 127.0.0.1:{postgres.port}, database {postgres.env()['DAGSTER_PG_DB']}")
        env.update(postgres.env())
        topology = Topology(home=STATE / "dagster_home", env=env, logs=STATE / "logs", ui_port=UI_PORT)
        print("==> the code server, the daemon and the webserver (logs in .deploy/logs)")
        topology.start()
        print(f"==> Dagster UI on {topology.url} (code server on 127.0.0.1:{topology.grpc_port}); Ctrl-C stops it all")
        while True:
            for name, process in topology.processes.items():
                if process.poll() is not None:
                    print(f"{name} exited with {process.returncode}; its log:\n{topology.log_tail(name)}")
                    return 1
            time.sleep(1)
    except KeyboardInterrupt:
        print("\n==> stopping")
        return 0
    finally:
        if topology is not None:
            topology.stop()
        postgres.stop()
        for process in started:
            process.terminate()
            process.wait(timeout=20)


if __name__ == "__main__":
    sys.exit(main())
