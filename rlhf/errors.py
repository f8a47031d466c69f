"""Errors a user can fix: train.py prints them as one line and exits non-zero."""


class RlhfError(Exception):
    """Base class for problems caused by input (config, data, paths), not by a bug."""


class ConfigError(RlhfError):
    """A config value is missing, mistyped or impossible."""


class DataError(RlhfError):
    """A data file is missing, empty, or lacks a column."""


class ModelLoadError(RlhfError):
    """A model or tokenizer could not be found or loaded."""


class RewardError(RlhfError):
    """A reward source raised, returned the wrong number of scores, or returned NaN."""


class NumericError(RlhfError):
    """A loss, reward, advantage or gradient went non-finite during PPO."""


class RunFolderError(RlhfError):
    """A folder from an earlier run (a stage's run record, a checkpoint) is broken."""
