"""One writer per hour: an Azure blob lease on a small per-hour lock blob.

Two exports of one hour at once would mix their parts and markers (Azure drops a blob's
uncommitted blocks when any block list is committed to it). So an export first leases
the hour's lock blob (`layout.lock(hour)`, outside the folders readers glob), holds the
lease until its marker is written, then deletes the lock blob, which ends the lease.
The lease is short (`LEASE_SECONDS`) and a daemon thread renews it, so a killed run
frees the hour within `LEASE_SECONDS`; the next export takes over the blob it left.

A second export of a leased hour polls until `wait_seconds` have passed, then fails
with `HourLocked`, naming the hour, since when and by whom it is held (the holder
records that in the lock blob's metadata when it takes the lease). If the lease is
lost (a renewal refused, or impossible for longer than the lease lasts), `confirm`
raises `LeaseLost`: the export calls it before it changes the hour and before its
marker, so an export that lost its hour never writes a marker.

The lease guards the lock blob alone: Azure cannot make a write to another blob
conditional on it, so the operations on the lock blob itself carry the lease ID.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone

from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import BlobClient, BlobLeaseClient, ContainerClient, ContentSettings

LEASE_SECONDS = 30  # Azure allows 15-60 s; a killed run holds its hour at most this long
RENEW_SECONDS = 10  # renewed well before it lapses
POLL_SECONDS = 2.0  # how often a waiting export tries again
LOCK_BODY = b"amplitude_assets: the lease on this blob marks the hour as being exported\n"
WAIT_VARIABLE = "AMPLITUDE_HOUR_LOCK_WAIT_SECONDS"
# Refusals that mean another lease holds the blob now, or ours is gone for good.
_HELD = "LeaseAlreadyPresent"
_GONE_STATUSES = (409, 412)


class HourLocked(RuntimeError):
    """Another export holds the hour's lease, and it was not released in time."""


class LeaseLost(RuntimeError):
    """This export's lease on its hour lapsed or was taken: it must not write its marker."""


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ascii(text: str) -> str:
    return text.encode("ascii", "replace").decode()


class HourLease:
    """A lease held on one hour's lock blob, renewed from a daemon thread while it is held."""

    def __init__(self, blob: BlobClient, lease: BlobLeaseClient, hour_label: str, lease_seconds: int):
        self.blob = blob
        self.lease = lease
        self.hour_label = hour_label
        self.lease_seconds = lease_seconds
        self.renewed_at = time.monotonic()
        self.lost: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._keep, name="amplitude-hour-lease", daemon=True)

    def _renew(self) -> None:
        """Renew now; raise LeaseLost when the lease is gone or cannot be kept."""
        with self._lock:
            if self.lost is None:
                try:
                    self.lease.renew()
                    self.renewed_at = time.monotonic()
                    return
                except HttpResponseError as exc:
                    reason = f"{type(exc).__name__} {exc.status_code} {exc.error_code or ''}".strip()
                    if exc.status_code in _GONE_STATUSES or time.monotonic() - self.renewed_at >= self.lease_seconds:
                        self.lost = f"renewing it was refused ({reason})"
                    else:
                        raise LeaseLost(f"{self.hour_label}: the hour's lease could not be renewed ({reason})") from None
            raise LeaseLost(
                f"{self.hour_label}: this export lost its lease on the hour ({self.lost}); another export may "
                "be writing it, so this one stops without writing its marker"
            )

    def confirm(self) -> None:
        """Make sure the lease is still ours, for `lease_seconds` from now."""
        self._renew()

    def _keep(self) -> None:
        interval = min(RENEW_SECONDS, self.lease_seconds / 3)
        while not self._stop.wait(interval):
            try:
                self._renew()
                interval = min(RENEW_SECONDS, self.lease_seconds / 3)
            except LeaseLost:
                if self.lost is not None:
                    return
                interval = 1.0  # a passing fault: try again soon, until the lease would lapse
            except Exception:  # noqa: BLE001 - a network error: same as a passing fault
                interval = 1.0

    def _release(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(timeout=60)
        if self.lost is None:
            try:
                # Deleting a leased blob takes the lease: the lock blob goes with the lease,
                # so only a killed run leaves one behind (taken over once its lease lapses).
                self.blob.delete_blob(lease=self.lease)
            except HttpResponseError:
                pass  # the lease lapses by itself within lease_seconds


def _holder_text(blob: BlobClient) -> str:
    """`since 2024-01-01T05:00:00Z (run abc, host h, pid 12)`, from the lock blob's metadata."""
    metadata: dict = {}
    for _ in range(5):  # the holder records itself just after taking the lease
        try:
            metadata = blob.get_blob_properties().metadata or {}
        except HttpResponseError:
            metadata = {}
        if metadata.get("started_at"):
            break
        time.sleep(0.2)
    started = metadata.get("started_at")
    who = ", ".join(
        f"{label} {metadata[key]}" for key, label in (("run_id", "run"), ("host", "host"), ("pid", "pid")) if metadata.get(key)
    )
    since = f"since {started}" if started else "since a time it had not recorded yet"
    return f"{since} ({who})" if who else since


@contextmanager
def hour_lease(
    container: ContainerClient,
    lock_blob_name: str,
    hour_label: str,
    wait_seconds: float,
    *,
    holder: str | None = None,
    lease_seconds: int | None = None,
    notify: Callable[[str], None] | None = None,
) -> Iterator[HourLease]:
    """Hold the lease on an hour's lock blob for the duration of the block.

    Creates the lock blob if it is missing. While another export holds it, tries again
    every `POLL_SECONDS` until `wait_seconds` have passed, then raises `HourLocked`;
    `notify` (a logger) hears once that it waits, and for whom.
    `holder` (a run ID) is recorded in the lock blob's metadata with the start time.
    """
    lease_seconds = LEASE_SECONDS if lease_seconds is None else lease_seconds
    blob = container.get_blob_client(lock_blob_name)
    lease = BlobLeaseClient(blob)
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            lease.acquire(lease_duration=lease_seconds)
            break
        except ResourceNotFoundError:
            try:
                blob.upload_blob(LOCK_BODY, overwrite=False, content_settings=ContentSettings(content_type="text/plain"))
            except ResourceExistsError:
                pass  # another export created it first
            continue
        except HttpResponseError as exc:
            if exc.error_code != _HELD:
                raise
        remaining = deadline - time.monotonic()
        if notify is not None and remaining > 0:
            notify(f"{hour_label}: another export holds this hour {_holder_text(blob)}; waiting up to "
                   f"{wait_seconds:g} s for it ({WAIT_VARIABLE})")
            notify = None
        if remaining <= 0:
            raise HourLocked(
                f"{hour_label}: another export holds this hour {_holder_text(blob)}; gave up after waiting "
                f"{wait_seconds:g} s ({WAIT_VARIABLE}). Nothing of the hour was changed. The hour is free once that "
                f"export ends, or within {lease_seconds} s if it was killed: run it again then."
            )
        time.sleep(min(POLL_SECONDS, remaining))

    held = HourLease(blob, lease, hour_label, lease_seconds)
    try:
        try:
            blob.set_blob_metadata(
                {"started_at": _now(), "run_id": _ascii(holder or ""), "host": _ascii(socket.gethostname()),
                 "pid": str(os.getpid())},
                lease=lease,
            )
        except HttpResponseError as exc:
            if exc.status_code not in _GONE_STATUSES and not str(exc.error_code or "").startswith("Lease"):
                raise
            # The lease was broken or taken between acquiring it and labelling it: it is lost.
            held.lost = f"it was gone at once ({exc.status_code} {exc.error_code or ''})".strip()
            held._renew()  # raises LeaseLost, naming the hour
        held._thread.start()
        yield held
    finally:
        held._release()
