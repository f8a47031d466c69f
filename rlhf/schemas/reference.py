"""docs/reference/config.md, written from the schemas: every key with its default, the values it
accepts and its doc, so the page cannot drift from the code (tests/config/test_config.py compares them).

    python -m rlhf.schemas.reference      # rewrite docs/reference/config.md
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

from rlhf.config import Config, GoalConfig, HackingGuardConfig, JudgeConfig
from rlhf.paths import PROJECT_ROOT
from rlhf.schemas.fields import doc_of, range_of, renames_of

REFERENCE = PROJECT_ROOT / "docs" / "reference" / "config.md"
# Open fields typed when the config is validated (a mapping, or null for off): their keys.
OPEN_SECTIONS = [
    ("ppo.hacking_guard", HackingGuardConfig), ("eval.judge", JudgeConfig),
    ("eval.goals.<name>", GoalConfig),
]  # fmt: skip
HEADER = """# Configuration reference

Every key of the composed config with its default, the values it accepts and what it does.
Written from the schemas in rlhf/schemas/ by `python -m rlhf.schemas.reference`; do not edit by
hand. `python train.py --cfg job [overrides]` prints the values a run would use.
"""


def yaml_value(value: Any) -> str:
    """`value` as it is written in YAML or on the command line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(yaml_value(item) for item in value) + "]"
    return str(value)


def default_of(item: dataclasses.Field) -> Any:
    if item.default is not dataclasses.MISSING:
        return item.default
    return item.default_factory()


def cell(text: str) -> str:
    return text.replace("|", "\\|")


def section_lines(key: str, schema: type, instance: Any = None) -> list[str]:
    """The table of `schema`'s own keys under the heading `key`, then its sub-sections."""
    title = f"`{key}`" if key else "Top level"
    lines = [f"## {title}", ""]
    if schema.__doc__ and dataclasses.is_dataclass(schema) and not key.endswith("<name>"):
        summary = " ".join(schema.__doc__.split())
        if not summary.startswith(f"{schema.__name__}("):  # dataclasses' generated docstring
            lines += [summary, ""]
    lines += ["| key | default | accepts | what it does |", "|---|---|---|---|"]
    below: list[tuple[str, type, Any]] = []
    renames = renames_of(schema)
    for item in dataclasses.fields(schema):
        if item.name in renames:
            continue
        value = getattr(instance, item.name) if instance is not None else default_of(item)
        name = f"{key}.{item.name}" if key else item.name
        if dataclasses.is_dataclass(value):
            below.append((name, type(value), value))
            continue
        allowed = range_of(item)
        accepts = allowed.describe() if allowed is not None else ""
        lines.append(
            f"| `{name}` | `{cell(yaml_value(value))}` | {cell(accepts)} | {cell(doc_of(item))} |"
        )
    for old, new in renames.items():
        prefix = f"{key}." if key else ""
        lines.append(f"| `{prefix}{old}` | | | old name of `{prefix}{new}` (still accepted) |")
    lines.append("")
    for name, sub, value in below:
        lines += section_lines(name, sub, value)
    return lines


def render() -> str:
    """The whole reference page (Markdown)."""
    lines = [HEADER, *section_lines("", Config, Config())]
    for key, schema in OPEN_SECTIONS:
        lines += section_lines(key, schema)
    return "\n".join(lines).rstrip() + "\n"


def main() -> None:
    REFERENCE.parent.mkdir(parents=True, exist_ok=True)
    REFERENCE.write_text(render(), encoding="utf-8")
    print(f"wrote {REFERENCE.relative_to(PROJECT_ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
