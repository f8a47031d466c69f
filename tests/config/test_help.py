"""`python train.py --help` lists the config groups with their options, the two commands and the
docs (not the whole composed config); messages to users name settings and measurements, never
the project's internal history."""

from __future__ import annotations

import ast
import re
import subprocess
import sys

from rlhf.config import SCHEMA_OPTIONS
from rlhf.paths import PROJECT_ROOT
from tests.helpers import subprocess_environment

CONF = PROJECT_ROOT / "conf"


def config_groups() -> dict[str, list[str]]:
    """Every group under conf/ (hydra's own aside) and its options, as Hydra lists them: its
    YAML files and the option stored from the schema's own defaults (`ppo: default`)."""
    groups = {group: [option] for group, (option, _) in SCHEMA_OPTIONS.items()}
    for folder in sorted(path for path in CONF.rglob("*") if path.is_dir()):
        group = folder.relative_to(CONF).as_posix()
        options = [path.stem for path in folder.glob("*.yaml")]
        if options and not group.startswith("hydra"):
            groups[group] = sorted(groups.get(group, []) + options)
    return dict(sorted(groups.items()))


def test_help_lists_the_groups_the_commands_and_the_docs():
    done = subprocess.run(
        [sys.executable, "train.py", "--help"], capture_output=True, text=True, timeout=300,
        cwd=PROJECT_ROOT, env=subprocess_environment(),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    text = done.stdout
    for group, options in config_groups().items():
        assert f"\n{group}: {', '.join(options)}\n" in text, group
    for command in ("make run", "make test"):
        assert command in text
    for page in re.findall(r"^\s+(\S+\.md)\s", text, flags=re.M):
        assert (PROJECT_ROOT / page).is_file(), page
    assert {"README.md", "docs/ARCHITECTURE.md", "docs/reference/config.md"} <= set(
        re.findall(r"\S+\.md", text)
    )
    assert "learning_rate:" not in text and "name_or_path:" not in text  # no composed config
    assert len(text.splitlines()) < 60


def test_messages_cite_no_internal_history(monkeypatch):
    """No string in the package (log lines, errors, docstrings) cites an issue number."""
    cited = []
    for path in sorted((PROJECT_ROOT / "rlhf").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            text = node.value if isinstance(node, ast.Constant) else None
            if isinstance(text, str) and re.search(r"\bissues? #?\d+", text, flags=re.I):
                cited.append(f"{path.relative_to(PROJECT_ROOT)}:{node.lineno}")
    assert cited == []
    from rlhf.ppo import precision

    monkeypatch.setattr(precision, "native_bf16_flags", lambda: ("avx512_bf16",))
    line = precision.describe_precision("no", "cpu")
    assert "model.mixed_precision=bf16" in line and "0.76x the fp32 seconds" in line
    assert "issue" not in line.lower() and "W-small" not in line
