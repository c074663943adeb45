"""`check_destination`: Amplitude's "test upload", for each destination (events, merged IDs).

It writes a probe blob, reads it back, lists the container and deletes the blob, and reports
the four steps separately. A refused permission names the Azure RBAC data action to grant;
a refused credential names the variable that holds it (never its value). The same check
runs as the Dagster job `check_destination` and as `python -m amplitude_assets check-destination`.
"""

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone

import dagster as dg
from azure.core.exceptions import (
    ClientAuthenticationError,
    ResourceNotFoundError,
    ServiceRequestError,
)
from azure.storage.blob import ContentSettings

from amplitude_assets.destination.credentials import AzureStorage
from amplitude_assets.destination.layout import probe_blob_name
from amplitude_assets.settings import Settings, SettingsError

ACTIONS = {
    "write": "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/write",
    "read": "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/read",
    "list": "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/read",
    "delete": "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/delete",
}
SAS_LETTERS = {"write": "w (and c)", "read": "r", "list": "l", "delete": "d"}
PERMISSION_CODES = {
    "AuthorizationPermissionMismatch",
    "AuthorizationFailure",
    "AuthorizationResourceTypeMismatch",
    "AuthorizationServiceMismatch",
    "AuthorizationProtocolMismatch",
    "AuthorizationSourceIPMismatch",
    "InsufficientAccountPermissions",
}
STEPS = ("write", "read", "list", "delete")


@dataclass
class Step:
    name: str
    ok: bool | None  # None: skipped
    message: str


@dataclass
class DestinationReport:
    label: str
    container: str
    probe: str
    steps: list[Step] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(step.ok for step in self.steps)


def explain(exc: Exception, step: str, storage: AzureStorage, container: str) -> str:
    """What went wrong, and what to do about it, without any secret."""
    if isinstance(exc, SettingsError):
        return str(exc)
    code = getattr(exc, "error_code", None) or ""
    code = str(getattr(code, "value", code))
    status = getattr(exc, "status_code", None)
    text = str(getattr(exc, "message", None) or exc).strip()
    first_line = text.splitlines()[0] if text else ""
    detail = storage.redact(f"{code or type(exc).__name__}: {first_line}")
    method = storage.method
    # Azure says AuthenticationFailed; the emulator says AuthorizationFailure with Azure's text.
    refused = code == "AuthenticationFailed" or first_line.startswith("Server failed to authenticate the request")
    if refused or (isinstance(exc, ClientAuthenticationError) and code not in PERMISSION_CODES):
        return (
            f"authentication failed: the storage account refused the credential from {method} "
            f"(a wrong or rotated key, an expired SAS token or a refused token). Check {method}. [{detail}]"
        )
    if code in PERMISSION_CODES or status == 403:
        hint = f"grant the Azure RBAC data action {ACTIONS[step]} on container {container!r}"
        if storage.sas_token and not storage.connection_string:
            hint += f", or issue a SAS token with the {SAS_LETTERS[step]} permission"
        return f"permission denied: {hint}. [{detail}]"
    if isinstance(exc, ResourceNotFoundError) and code == "ContainerNotFound":
        return (
            f"container {container!r} does not exist: create it, or set AZURE_CREATE_CONTAINERS=true. [{detail}]"
        )
    if isinstance(exc, ServiceRequestError):
        return f"could not reach {storage.endpoint}: {detail}"
    return detail


def check_one(storage: AzureStorage, label: str, container: str, prefix: str) -> DestinationReport:
    """Write, read back, list and delete a probe blob in one destination."""
    probe = probe_blob_name(prefix)
    report = DestinationReport(label=label, container=container, probe=probe)
    body = f"amplitude_assets destination test {datetime.now(timezone.utc):%Y-%m-%dT%H:%M:%SZ} {uuid.uuid4()}\n".encode()

    def run(step: str, action) -> bool:
        try:
            message = action()
            report.steps.append(Step(step, True, message))
            return True
        except AssertionError as exc:
            report.steps.append(Step(step, False, str(exc)))
        except Exception as exc:  # every failure becomes a line of the report
            report.steps.append(Step(step, False, explain(exc, step, storage, container)))
        return False

    client = None

    def connect() -> None:
        nonlocal client
        client = storage.container(container)

    try:
        connect()
    except Exception as exc:
        message = explain(exc, "write", storage, container)
        report.steps = [Step(s, False, message) for s in STEPS]
        return report

    def write() -> str:
        client.upload_blob(probe, body, overwrite=True,
                           content_settings=ContentSettings(content_type="text/plain"))
        return f"wrote {container}/{probe} ({len(body)} bytes)"

    def read() -> str:
        data = client.download_blob(probe).readall()
        assert data == body, f"read back {len(data)} bytes that differ from the {len(body)} written"
        return "read it back, byte for byte"

    def listing() -> str:
        names = [b.name for b in client.list_blobs(name_starts_with=probe)]
        if not wrote:
            return f"listed {container}/"
        assert probe in names, f"the listing of {container}/{probe} does not show the probe"
        return f"listed {container}/ and found the probe"

    def delete() -> str:
        client.delete_blob(probe)
        return "deleted the probe"

    wrote = run("write", write)
    if wrote:
        run("read", read)
    else:
        report.steps.append(Step("read", None, "skipped: nothing was written"))
    run("list", listing)
    if wrote:
        if not run("delete", delete):
            report.steps[-1].message += f" The probe {container}/{probe} is left behind; delete it by hand."
    else:
        report.steps.append(Step("delete", None, "skipped: nothing was written"))
    return report


def destinations(settings: Settings) -> list[tuple[str, str, str]]:
    return [
        ("events", settings.events_container, settings.events_prefix),
        ("merged IDs", settings.merged_ids_container, settings.merged_ids_prefix),
    ]


def check_destinations(settings: Settings, storage: AzureStorage) -> list[DestinationReport]:
    return [check_one(storage, label, container, prefix) for label, container, prefix in destinations(settings)]


def format_report(reports: list[DestinationReport], storage: AzureStorage) -> str:
    try:
        method = storage.method
    except SettingsError as exc:
        method = str(exc)
    lines = [f"Azure Blob Storage at {storage.endpoint or '(no endpoint)'}, credential from {method}"]
    for report in reports:
        where = f"{report.container}/{report.probe}"
        lines.append(f"{report.label} destination ({where}): {'OK' if report.ok else 'FAILED'}")
        for step in report.steps:
            mark = "ok" if step.ok else ("skipped" if step.ok is None else "FAILED")
            lines.append(f"  {step.name:<7} {mark:<8} {step.message}")
    passed = all(r.ok for r in reports)
    lines.append("All destination checks passed." if passed else "Some destination checks failed.")
    return storage.redact("\n".join(lines))


def run_check_destination(settings: Settings, storage: AzureStorage) -> bool:
    """Check every destination, print the report; True when everything passed."""
    reports = check_destinations(settings, storage)
    print(format_report(reports, storage), flush=True)
    return all(r.ok for r in reports)


def build_check_destination_job(settings: Settings) -> dg.JobDefinition:
    @dg.op(name="probe_destinations", description="Write, read back, list and delete a probe blob in each destination.")
    def check_destination_op(context: dg.OpExecutionContext, storage: AzureStorage) -> None:
        reports = check_destinations(settings, storage)
        text = format_report(reports, storage)
        for report in reports:
            for step in report.steps:
                context.log.info(storage.redact(f"{report.label} {step.name}: {'ok' if step.ok else 'FAILED' if step.ok is False else 'skipped'} - {step.message}"))
        context.add_output_metadata({
            "report": dg.MetadataValue.md("```\n" + text + "\n```"),
            **{f"{r.label} {s.name}": ("ok" if s.ok else "failed" if s.ok is False else "skipped")
               for r in reports for s in r.steps},
        })
        if not all(r.ok for r in reports):
            raise dg.Failure(description=text)

    @dg.job(name="check_destination", description=(
        "Amplitude's test upload: writes a probe blob to each destination, reads it back, lists the "
        "container and deletes the blob; names the Azure permission or credential to fix."))
    def check_destination():
        check_destination_op()

    return check_destination
