"""The production topology as plain processes on one machine: what `make deploy-local` starts.

The same pieces as deploy/docker-compose.yaml, with the same commands and configuration:
  - PostgreSQL (Debian's `postgresql` package) on a free loopback port, for the instance;
  - the code server, `dagster api grpc -m amplitude_assets.definitions`, which also starts the runs;
  - `dagster-daemon run` (run queue, sensors, backfills, run monitoring) and `dagster-webserver`,
    both loading deploy/workspace.yaml;
  - DAGSTER_HOME holding deploy/dagster.yaml, unchanged.

`initdb` and `pg_ctl` refuse to run as root. As root they run as the `postgres` user, in a
data folder under /var/tmp that this user owns: a checkout under a 0700 folder (a `mktemp -d`
clone, pytest's tmp_path) cannot be entered by another user. As anyone else they run as that user.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from amplitude_assets.destination.credentials import EMULATOR_KEY

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"
DEPLOY = ROOT / "deploy"
PG_BIN_CANDIDATES = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
PG_USER = "postgres"
PG_DB = "dagster"
PG_PASSWORD = "dagster"  # local only: the cluster trusts loopback connections
AZURITE = ROOT / "node_modules" / ".bin" / "azurite-blob"
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = EMULATOR_KEY


def free_port() -> int:
    """A loopback port nothing listens on now (the tests and bench/ use it too, through tests.conftest)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 60.0, process: subprocess.Popen | None = None) -> None:
    """Until something listens on 127.0.0.1:port; fails at once if `process` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f}s")


def connection_string(port: int) -> str:
    """Azurite's well-known account on 127.0.0.1:port."""
    return (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
        f"BlobEndpoint=http://127.0.0.1:{port}/{ACCOUNT};"
    )


def start_azurite(port: int, location: Path | None, *extra: str) -> subprocess.Popen:
    """Azurite on 127.0.0.1:port; data under `location`, or in memory when it is None."""
    if not AZURITE.exists():
        raise RuntimeError(f"{AZURITE} is missing: run `make bootstrap` (npm install) first")
    process = subprocess.Popen(
        [str(AZURITE), "--blobHost", "127.0.0.1", "--blobPort", str(port),
         *(["--location", str(location)] if location else ["--inMemoryPersistence"]),
         "--skipApiVersionCheck", "--disableTelemetry", "--loose", "--silent", *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    wait_for_port(port, process=process)
    return process


def pg_bin(name: str) -> str:
    for folder in PG_BIN_CANDIDATES:
        if (folder / name).exists():
            return str(folder / name)
    found = shutil.which(name)
    if found:
        return found
    raise RuntimeError(f"{name} not found: install PostgreSQL (Debian: apt-get install postgresql)")


def default_pg_folder() -> Path:
    """Where this checkout's cluster lives: beside it when we are not root, else under /var/tmp."""
    if os.geteuid() != 0:
        return ROOT / ".deploy" / "postgres"
    digest = hashlib.sha256(str(ROOT).encode()).hexdigest()[:12]
    return Path("/var/tmp") / f"amplitude_assets-postgres-{digest}"


@dataclass
class Postgres:
    """A PostgreSQL cluster in `folder` (created on first start, resumed after), on a loopback port."""

    folder: Path
    port: int = 0
    log: Path | None = None

    @property
    def data(self) -> Path:
        return self.folder / "data"

    def _as_owner(self, args: list[str]) -> list[str]:
        if os.geteuid() == 0:
            return ["runuser", "-u", PG_USER, "--", *args]
        return args

    def _prepare(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            owner = pwd.getpwnam(PG_USER)
            os.chmod(self.folder, 0o755)
            os.chown(self.folder, owner.pw_uid, owner.pw_gid)
        if not (self.data / "PG_VERSION").exists():
            subprocess.run(
                self._as_owner([pg_bin("initdb"), "-D", str(self.data), "-U", PG_USER, "--auth=trust",
                                "--encoding=UTF8", "--no-instructions"]),
                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )

    def start(self) -> None:
        self._prepare()
        self.port = self.port or free_port()
        log = self.folder / "postgres.log"
        subprocess.run(
            self._as_owner([pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(log), "-w", "-t", "60",
                            "-o", f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1", "start"]),
            check=True, stdout=subprocess.DEVNULL,
        )
        self.log = log
        exists = subprocess.run(
            [pg_bin("psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", PG_USER, "-tAc",
             f"SELECT 1 FROM pg_database WHERE datname = '{PG_DB}'"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()
        if exists != "1":
            subprocess.run([pg_bin("createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", PG_USER, PG_DB],
                           check=True)

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            subprocess.run(self._as_owner([pg_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"]),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)

    def env(self) -> dict[str, str]:
        """The DAGSTER_PG_* variables deploy/dagster.yaml reads."""
        return {
            "DAGSTER_PG_USERNAME": PG_USER,
            "DAGSTER_PG_PASSWORD": PG_PASSWORD,
            "DAGSTER_PG_HOST": "127.0.0.1",
            "DAGSTER_PG_PORT": str(self.port),
            "DAGSTER_PG_DB": PG_DB,
        }


@dataclass
class Topology:
    """The code server, the daemon and the webserver, each in its own process group."""

    home: Path  # DAGSTER_HOME: gets deploy/dagster.yaml as dagster.yaml
    env: dict[str, str]  # the code location's settings, DAGSTER_PG_* included
    logs: Path
    ui_port: int = 0
    grpc_port: int = 0
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ui_port}"

    def process_env(self) -> dict[str, str]:
        return {
            **self.env,
            "DAGSTER_HOME": str(self.home),
            "DAGSTER_GRPC_HOST": "127.0.0.1",
            "DAGSTER_GRPC_PORT": str(self.grpc_port),
            "PYTHONUNBUFFERED": "1",
        }

    def commands(self) -> dict[str, list[str]]:
        """The compose services' commands, on loopback ports (deploy/docker-compose.yaml)."""
        workspace = str(DEPLOY / "workspace.yaml")
        return {
            "code-server": [str(VENV_BIN / "dagster"), "api", "grpc", "--host", "127.0.0.1", "--port",
                            str(self.grpc_port), "--module-name", "amplitude_assets.definitions"],
            "daemon": [str(VENV_BIN / "dagster-daemon"), "run", "-w", workspace],
            "webserver": [str(VENV_BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(self.ui_port),
                          "-w", workspace],
        }

    def start_one(self, name: str) -> subprocess.Popen:
        self.logs.mkdir(parents=True, exist_ok=True)
        with open(self.logs / f"{name}.log", "ab") as out:
            process = subprocess.Popen(
                self.commands()[name], cwd=str(ROOT), env=self.process_env(), stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.processes[name] = process
        return process

    def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        shutil.copy(DEPLOY / "dagster.yaml", self.home / "dagster.yaml")
        self.ui_port = self.ui_port or free_port()
        self.grpc_port = self.grpc_port or free_port()
        wait_for_port(self.grpc_port, timeout=180, process=self.start_one("code-server"))
        self.start_one("daemon")
        wait_for_port(self.ui_port, timeout=180, process=self.start_one("webserver"))

    def stop(self, grace: float = 20.0) -> None:
        for name in ("webserver", "daemon", "code-server"):
            process = self.processes.pop(name, None)
            if process is not None:
                stop_group(process, grace)

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.logs / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def stop_group(process: subprocess.Popen, grace: float = 20.0) -> None:
    """SIGTERM the process group, then SIGKILL whatever is left of it."""
    if process.poll() is not None and not _group_alive(process.pid):
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if process.poll() is not None and not _group_alive(process.pid):
                return
            time.sleep(0.2)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


if __name__ == "__main__":  # pragma: no cover - `make deploy-local` runs scripts.deploy_local
    sys.exit("run `make deploy-local`")
