"""Errors raised by :mod:`ldm_mini.data`. Each message says what to do next."""

from __future__ import annotations


class DatasetError(RuntimeError):
    """Base class of every data-layer error."""


class UnknownDatasetError(DatasetError, ValueError):
    """A dataset name that is neither bundled, procedural, a folder nor a Hub id."""


class DamagedShardError(DatasetError):
    """A bundled parquet shard is missing or its sha256 does not match the manifest."""


class HubUnavailableError(DatasetError, ConnectionError):
    """A Hugging Face Hub dataset was asked for but the Hub cannot be reached (or cached)."""


class CorruptImageError(DatasetError):
    """An image file in a local folder dataset cannot be decoded."""


class DataDirNotFoundError(DatasetError, FileNotFoundError):
    """The folder holding the bundled datasets (``data/``) cannot be found."""
