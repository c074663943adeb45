"""`check_destination`: Amplitude's "test upload", for each destination (events, merged IDs).

It writes a probe blob, reads it back, lists the container and deletes the blob, and reports
the four steps separately. A refused permission names the Azure RBAC data action to grant;
a refused credential names the variable that holds it (never its value). The same check
runs as the Dagster job `check_destination` and as `python -m amplitude_assets check-destination`.

The probe uses a client with short timeouts and one retry (the export keeps the SDK's own
policy), so an unreachable endpoint is reported within seconds. Each problem is reported
once: the steps after a failed one are skipped, and so is a destination that could only
repeat the failure of the one before it.
"""

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone

import dagster as dg
from azure.core.exceptions import ClientAuthenticationError, ServiceRequestError, ServiceResponseError
from azure.storage.blob import ContentSettings

from amplitude_assets.destination.credentials import RBAC_ACTIONS, AzureStorage
from amplitude_assets.layout import probe_blob_name
from amplitude_assets.settings import Settings

ACTIONS = RBAC_ACTIONS


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
    skipped: str | None = None  # why the destination was not probed at all
    account_wide: bool = False  # it failed for the whole account: unreachable or a refused credential

    @property
    def ok(self) -> bool:
        return self.skipped is None and all(step.ok for step in self.steps)


def explain(exc: Exception, step: str, storage: AzureStorage, container: str) -> str:
    """What went wrong, and what to do about it, without any secret."""
    message = storage.explain(exc, step, container)
    if message is not None:
        return message
    code = getattr(exc, "error_code", None) or ""
    code = str(getattr(code, "value", code))
    text = str(getattr(exc, "message", None) or exc).strip()
    first_line = text.splitlines()[0] if text else ""
    return storage.redact(f"{code or type(exc).__name__}: {first_line}")


def check_one(storage: AzureStorage, label: str, container: str, prefix: str) -> DestinationReport:
    """Write, read back, list and delete a probe blob in one destination.

    write, read and list run in turn, and a failed step skips the ones after it; delete runs
    whenever the probe was written, so that it does not stay behind."""
    probe = probe_blob_name(prefix)
    report = DestinationReport(label=label, container=container, probe=probe)
    body = f"amplitude_assets destination test {datetime.now(timezone.utc):%Y-%m-%dT%H:%M:%SZ} {uuid.uuid4()}\n".encode()
    client = None

    def write() -> str:
        nonlocal client
        client = storage.container(container, probe=True)  # may create it: AZURE_CREATE_CONTAINERS
        client.upload_blob(probe, body, overwrite=True,
                           content_settings=ContentSettings(content_type="text/plain"))
        return f"wrote {container}/{probe} ({len(body)} bytes)"

    def read() -> str:
        data = client.download_blob(probe).readall()
        if data != body:
            raise AssertionError(f"read back {len(data)} bytes that differ from the {len(body)} written")
        return "read it back, byte for byte"

    def listing() -> str:
        names = [b.name for b in client.list_blobs(name_starts_with=probe)]
        if probe not in names:
            raise AssertionError(f"the listing of {container}/{probe} does not show the probe")
        return f"listed {container}/ and found the probe"

    def delete() -> str:
        client.delete_blob(probe)
        return "deleted the probe"

    failed = None
    for name, action in (("write", write), ("read", read), ("list", listing)):
        if failed:
            report.steps.append(Step(name, None, f"the {failed} failed"))
            continue
        try:
            report.steps.append(Step(name, True, action()))
        except AssertionError as exc:
            report.steps.append(Step(name, False, str(exc)))
            failed = name
        except Exception as exc:  # every failure becomes a line of the report
            report.steps.append(Step(name, False, explain(exc, name, storage, container)))
            report.account_wide = isinstance(exc, (ServiceRequestError, ServiceResponseError, ClientAuthenticationError)) or (
                report.steps[-1].message.startswith("authentication failed")
            )
            failed = name
    if report.steps[0].ok:
        try:
            report.steps.append(Step("delete", True, delete()))
        except Exception as exc:
            message = explain(exc, "delete", storage, container)
            report.steps.append(Step("delete", False, f"{message} The probe {container}/{probe} is left behind; delete it by hand."))
    else:
        report.steps.append(Step("delete", None, "nothing was written"))
    return report


def destinations(settings: Settings) -> list[tuple[str, str, str]]:
    return [
        ("events", settings.events_container, settings.events_prefix),
        ("merged IDs", settings.merged_ids_container, settings.merged_ids_prefix),
    ]


def check_destinations(settings: Settings, storage: AzureStorage) -> list[DestinationReport]:
    """Probe each destination in turn.

    Settings that cannot work raise SettingsError before anything is tried. When a destination
    fails for the whole account (unreachable, or the credential refused), the ones after it are
    skipped: probing them would only repeat that failure."""
    storage.account()  # a missing or malformed setting: one message naming the variable
    reports: list[DestinationReport] = []
    for label, container, prefix in destinations(settings):
        before = next((r for r in reports if r.account_wide), None)
        if before is not None:
            reports.append(DestinationReport(
                label=label, container=container, probe=probe_blob_name(prefix),
                skipped=f"skipped: same storage account as the {before.label} destination, which failed above",
            ))
            continue
        reports.append(check_one(storage, label, container, prefix))
    return reports


def format_report(reports: list[DestinationReport], storage: AzureStorage) -> str:
    lines = [f"Azure Blob Storage at {storage.endpoint}, credential from {storage.method}"]
    for report in reports:
        where = f"{report.container}/{report.probe}"
        if report.skipped:
            lines.append(f"{report.label} destination ({where}): {report.skipped}")
            continue
        lines.append(f"{report.label} destination ({where}): {'OK' if report.ok else 'FAILED'}")
        for step in report.steps:
            mark = "ok" if step.ok else ("skipped" if step.ok is None else "FAILED")
            lines.append(f"  {step.name:<7} {mark:<8} {step.message}")
    passed = all(r.ok for r in reports)
    lines.append("All destination checks passed." if passed else "Some destination checks failed.")
    return storage.redact("\n".join(lines))


def run_check_destination(settings: Settings, storage: AzureStorage) -> bool:
    """Check every destination, print the report; True when everything passed.

    A setting that cannot work raises SettingsError (the command line prints it as one line)."""
    reports = check_destinations(settings, storage)
    print(format_report(reports, storage), flush=True)
    return all(r.ok for r in reports)


def build_check_destination_job(settings: Settings) -> dg.JobDefinition:
    @dg.op(name="probe_destinations", description="Write, read back, list and delete a probe blob in each destination.")
    def check_destination_op(context: dg.OpExecutionContext, storage: AzureStorage) -> None:
        reports = check_destinations(settings, storage)  # a SettingsError fails the step with its message
        text = format_report(reports, storage)
        statuses = {
            f"{r.label} {s.name}": ("ok" if s.ok else "failed" if s.ok is False else "skipped")
            for r in reports for s in r.steps
        } | {f"{r.label}": "skipped" for r in reports if r.skipped}
        if not all(r.ok for r in reports):
            # The report is the failure's description: the run page shows it once, as the headline.
            raise dg.Failure(description=text, metadata=statuses, allow_retries=False)
        context.log.info(text)
        context.add_output_metadata({"report": dg.MetadataValue.md("```\n" + text + "\n```"), **statuses})

    @dg.job(name="check_destination", description=(
        "Amplitude's test upload: writes a probe blob to each destination, reads it back, lists the "
        "container and deletes the blob; names the Azure permission or credential to fix."))
    def check_destination():
        check_destination_op()

    return check_destination
