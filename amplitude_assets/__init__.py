"""Amplitude's Azure Blob Storage export (events and merged Amplitude IDs) as a Dagster code location."""

__version__ = "0.1.0"
