"""The error every module raises for a setting, key or argument the user must fix."""

import dagster as dg


class SettingsError(ValueError, dg.Failure):
    """A setting is missing or malformed. The message names the variable.

    It is also a `dagster.Failure`, so a run that meets it fails with the message as its
    headline (not "Error occurred while handling output …" with the cause underneath), and
    a retry policy does not retry it."""

    def __init__(self, message: str):
        dg.Failure.__init__(self, description=message, allow_retries=False)
