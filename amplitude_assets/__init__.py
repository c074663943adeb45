"""Amplitude's Azure Blob Storage export (events and merged Amplitude IDs) as a Dagster code location."""

__version__ = "0.1.0"

from amplitude_assets import allocator as _allocator

_allocator.tune()  # before the first large buffer: see allocator.py
