"""Errors a user can fix: train.py prints them as one line and exits non-zero."""


class RlhfError(Exception):
    """Base class for problems caused by input (config, data, paths), not by a bug."""

    label = "error"  # how the one-line report starts


class ConfigError(RlhfError):
    """A config value is missing, mistyped or impossible."""

    label = "config error"


class DataError(RlhfError):
    """A data file is missing, empty, or lacks a column."""

    label = "data error"


class ModelLoadError(RlhfError):
    """A model or tokenizer could not be found or loaded."""

    label = "model error"


class StageNotAvailable(RlhfError):
    """The requested stage is declared but not implemented yet."""

    label = "stage not available"
