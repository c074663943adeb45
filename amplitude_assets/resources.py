"""The Dagster resources: where events come from, and the storage account they go to."""


import os

import dagster as dg

from amplitude_assets.settings import Settings, SettingsError
from amplitude_assets.sources import Source


class AmplitudeSource(dg.ConfigurableResource):
    """The configured source. The Export API keys arrive only through dagster.EnvVar."""

    kind: str = "synthetic"
    project_id: str = "187520"
    synthetic_events_per_hour: int = 2000
    synthetic_seed: int = 0
    export_api_url: str = "https://amplitude.com"
    api_key: str | None = None
    secret_key: str | None = None
    api_max_attempts: int = 6
    api_timeout_seconds: int = 600
    files_url: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> "AmplitudeSource":
        secrets = {
            field: dg.EnvVar(name)
            for field, name in (("api_key", "AMPLITUDE_API_KEY"), ("secret_key", "AMPLITUDE_SECRET_KEY"))
            if os.environ.get(name, "").strip()
        }
        return cls(
            kind=settings.source,
            project_id=settings.project_id,
            synthetic_events_per_hour=settings.synthetic_events_per_hour,
            synthetic_seed=settings.synthetic_seed,
            export_api_url=settings.export_api_base_url,
            api_max_attempts=settings.api_max_attempts,
            api_timeout_seconds=settings.api_timeout_seconds,
            files_url=settings.files_url,
            **secrets,
        )

    def open(self, storage=None) -> Source:
        """The source; `storage` (the destination's AzureStorage) serves `az://` file roots."""
        if self.kind == "synthetic":
            from amplitude_assets.sources.synthetic import SyntheticSource

            return SyntheticSource(self.project_id, self.synthetic_events_per_hour, self.synthetic_seed)
        if self.kind == "export_api":
            from amplitude_assets.sources.export_api import ExportApiSource

            for name, value in (("AMPLITUDE_API_KEY", self.api_key), ("AMPLITUDE_SECRET_KEY", self.secret_key)):
                if not value:
                    raise SettingsError(f"{name} is not set; the export_api source needs it")
            return ExportApiSource(
                base_url=self.export_api_url,
                api_key=self.api_key,
                secret_key=self.secret_key,
                max_attempts=self.api_max_attempts,
                timeout_seconds=self.api_timeout_seconds,
            )
        if self.kind == "files":
            from amplitude_assets.sources.files import FilesSource

            if not self.files_url:
                raise SettingsError("AMPLITUDE_FILES_URL is not set; the files source needs it")
            return FilesSource(self.files_url, self.project_id, storage=storage)
        raise SettingsError(f"AMPLITUDE_SOURCE must be synthetic, export_api or files, got {self.kind!r}")
