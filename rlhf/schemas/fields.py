"""How a schema field is declared and checked: `setting(default, doc, range)` keeps a field's
default, its one-line doc and the values it accepts together; `check_fields` enforces the range
(and folds a renamed key into its new name) when a schema is built."""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any

from rlhf.errors import ConfigError

log = logging.getLogger(__name__)


def setting(default: Any, doc: str, range: Range | None = None) -> Any:
    """A schema field: `default` (a callable is a factory: a section's class, a builder), `doc`
    (one line, shown in docs/reference/config.md), and the `range` of numbers it accepts (each
    element of a list; None passes, as "off", where the type allows it)."""
    metadata = {"doc": doc, "range": range}
    if callable(default):
        return dataclasses.field(default_factory=default, metadata=metadata)
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def renamed(new_name: str) -> Any:
    """The old name of the field `new_name`, kept working: a value given under it moves to the
    new name with one warning line (`check_fields`); giving both is an error."""
    return dataclasses.field(default=None, metadata={"doc": "", "renamed_to": new_name})


def doc_of(item: dataclasses.Field) -> str:
    return item.metadata.get("doc", "")


def range_of(item: dataclasses.Field) -> Range | None:
    return item.metadata.get("range")


def ranges_of(schema: Any) -> dict[str, Range]:
    """Field name → the range it accepts, for the fields of `schema` (class or instance) that
    have one."""
    return {f.name: range_of(f) for f in dataclasses.fields(schema) if range_of(f) is not None}


def renames_of(schema: Any) -> dict[str, str]:
    """Old field name → new field name, for the renamed keys `schema` still accepts."""
    return {
        f.name: f.metadata["renamed_to"]
        for f in dataclasses.fields(schema)
        if "renamed_to" in f.metadata
    }


def check_fields(schema: Any) -> None:
    """Renamed keys folded into their new names, then every field with a range holds a value in
    it (None is left to the type: Optional fields mean "off")."""
    fold_renamed(schema)
    for name, allowed in ranges_of(schema).items():
        value = getattr(schema, name)
        values = value if isinstance(value, (list, tuple)) else [value]
        for item in values:
            if item is None:
                continue
            require(
                isinstance(item, (int, float)) and not isinstance(item, bool),
                _key(schema, name),
                f"must be a number, got {item!r}",
            )
            require(
                allowed.contains(item),
                _key(schema, name),
                f"must be {allowed.describe()}, got {value!r}",
            )


def fold_renamed(schema: Any) -> None:
    """A value given under a renamed key moves to its new name, with one warning line; the new
    name moved away from its default as well is an error (which one is meant is unclear)."""
    defaults = {f.name: f for f in dataclasses.fields(schema)}
    for old, new in renames_of(schema).items():
        value = getattr(schema, old)
        if value is None:
            continue
        default = defaults[new].default
        require(
            getattr(schema, new) == default,
            _key(schema, old),
            f"is the old name of {_key(schema, new)}, which is set too; "
            f"set only {_key(schema, new)}",
        )
        log.warning(
            "%s is deprecated: its new name is %s",
            _key(schema, old),
            _key(schema, new),
        )
        setattr(schema, new, value)
        setattr(schema, old, None)


def require(condition: bool, key: str, message: str) -> None:
    """One line naming the key when `condition` fails."""
    if not condition:
        raise ConfigError(f"{key}: {message}")


def one_of(value: Any, choices: tuple, key: str) -> None:
    require(value in choices, key, f"{value!r} is not one of {', '.join(map(str, choices))}")


@dataclass(frozen=True)
class Range:
    """The values a numeric field accepts (each element of a list field); always finite."""

    low: float | None = None  # None: unbounded below
    high: float | None = None  # None: unbounded above
    low_open: bool = False  # low itself is excluded
    high_open: bool = False  # high itself is excluded

    def contains(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return self.high is None or not (
            value > self.high or (self.high_open and value == self.high)
        )

    def describe(self) -> str:
        if self.low is not None and self.high is not None:
            if self.low == self.high:
                return f"{_number(self.low)}"
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"in {left}{_number(self.low)}, {_number(self.high)}{right}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {_number(self.low)}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {_number(self.high)}"
        return "a finite number"


def _number(bound: float) -> str:
    return "2**32" if bound == SEED_LIMIT else f"{bound:g}"


SEED_LIMIT = 2**32  # set_seed seeds numpy, whose seeds are 0 <= seed < 2**32
POSITIVE = Range(0, low_open=True)
NON_NEGATIVE = Range(0)
AT_LEAST_ONE = Range(1)
SHARE = Range(0, 1)  # a share or probability: [0, 1]
FINITE = Range()
SEED = Range(0, SEED_LIMIT, high_open=True)


def _key(schema: Any, name: str) -> str:
    """The dotted config key of a field (`section` is the schema's place in `Config`)."""
    return f"{schema.section}.{name}" if schema.section else name


def typed_section(
    spec: dict, config_class: type, key: str | None = None, also: tuple[str, ...] = ()
) -> Any:
    """`spec` (a mapping from YAML or the command line) as a `config_class`, every key known
    (named as `<key>.<name>` in the error when not; `key` defaults to the class's section;
    `also`: keys the caller took out first)."""
    key = key or config_class.section
    known = [f.name for f in dataclasses.fields(config_class)]
    for name in spec:
        require(
            name in known,
            f"{key}.{name}",
            f"unknown key (known: {', '.join(known + list(also))})",
        )
    return config_class(**spec)
