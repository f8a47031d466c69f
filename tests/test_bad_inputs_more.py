"""Bad inputs, round 2 (issue 14), checked in process where the check lives: impossible numbers
(every numeric field of every schema, found by walking the schemas), names that do not exist,
the wrong kind of model, data, misbehaving reward functions. tests/test_bad_inputs.py runs the
same kinds end to end through train.py (exit code 2, one line, nothing finished)."""

from __future__ import annotations

import dataclasses
import math
import typing

import numpy as np
import pytest
from transformers import SchedulerType

from rlhf import config as config_module
from rlhf.app import typed_config
from rlhf.config import Config, Range
from rlhf.errors import ConfigError, RewardError
from rlhf.rewards import checked

# --- impossible numbers ------------------------------------------------------------------------


def numeric_fields() -> list[tuple[str, object, str, type, bool]]:
    """(dotted key, the schema instance holding it, field name, element type, is a list) of
    every int or float field (and list of them) reachable from a default `Config`."""
    found = []

    def walk(instance: object, prefix: str) -> None:
        hints = typing.get_type_hints(type(instance))
        for item in dataclasses.fields(instance):
            value = getattr(instance, item.name)
            key = f"{prefix}{item.name}"
            if dataclasses.is_dataclass(value):
                walk(value, f"{key}.")
                continue
            kinds = {hints[item.name], *typing.get_args(hints[item.name])}
            kinds |= {inner for kind in kinds for inner in typing.get_args(kind)}
            element = float if float in kinds else int if int in kinds else None
            is_list = any(typing.get_origin(kind) is list for kind in kinds)
            if element is not None:
                found.append((key, instance, item.name, element, is_list))

    walk(Config(), "")
    return found


NUMERIC_FIELDS = numeric_fields()


def test_every_numeric_field_of_every_schema_has_a_range():
    """No int or float field is left unchecked: each is in its schema's RANGES (no exemptions
    are needed: a field that is off when null is None-able and checked when set)."""
    assert len(NUMERIC_FIELDS) > 90  # the walk reaches every section (model.lora, ppo.health...)
    unchecked = [
        key for key, instance, name, *_ in NUMERIC_FIELDS if name not in type(instance).RANGES
    ]
    assert unchecked == []
    for key, instance, *_ in NUMERIC_FIELDS:  # the error names the key as the user types it
        assert key.rsplit(".", 1)[0] == type(instance).section or "." not in key, key


def outside(allowed: Range, element: type) -> list[float]:
    """Values just outside `allowed` (and non-finite ones for a float field)."""
    values: list[float] = [math.nan, math.inf, -math.inf] if element is float else []
    step = 1 if element is int else 0.5
    if allowed.low is not None:
        values.append(allowed.low if allowed.low_open else allowed.low - step)
    if allowed.high is not None:
        values.append(allowed.high if allowed.high_open else allowed.high + step)
    return [element(v) if math.isfinite(v) else v for v in values]


OUT_OF_RANGE = [
    pytest.param(instance, name, [bad, bad] if is_list else bad, key, id=f"{key}={bad}")
    for key, instance, name, element, is_list in NUMERIC_FIELDS
    for bad in outside(type(instance).RANGES[name], element)
]


@pytest.mark.parametrize("instance,name,value,key", OUT_OF_RANGE)
def test_a_value_outside_its_range_is_rejected_with_its_key(instance, name, value, key):
    with pytest.raises(ConfigError) as caught:
        dataclasses.replace(instance, **{name: value})
    assert str(caught.value).startswith(f"{key}: "), caught.value


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["ppo.total_updates=-5"], "ppo.total_updates: must be >= 1, got -5"),
        (["sft.num_train_epochs=-1"], "sft.num_train_epochs: must be > 0, got -1.0"),
        (["rm.per_device_train_batch_size=0"], "rm.per_device_train_batch_size: must be >= 1"),
        (["sft.gradient_accumulation_steps=0"], "sft.gradient_accumulation_steps: must be >= 1"),
        (["ppo.gradient_accumulation_steps=0"], "ppo.gradient_accumulation_steps: must be >= 1"),
        (["ppo.length_sampler=[8,2]"], "ppo.length_sampler: [min, max] is reversed: [8, 2]"),
        (["ppo.length_sampler=[2,4,8]"], "ppo.length_sampler: must be [min, max]"),
        (
            ["ppo.min_new_tokens=40", "ppo.max_new_tokens=8"],
            "ppo.min_new_tokens: 40 is above ppo.max_new_tokens=8",
        ),
        (["ppo.learning_rate=-1e-5"], "ppo.learning_rate: must be > 0, got -1e-05"),
        (["rm.learning_rate=-0.1"], "rm.learning_rate: must be > 0"),
        (["seed=-1"], "seed: must be in [0, 2**32), got -1"),
        (["ppo.seed=4294967296"], "ppo.seed: must be in [0, 2**32)"),
        (["data.seed=99999999999"], "data.seed: must be in [0, 2**32)"),
        (["sft.max_steps=0"], "sft.max_steps: 0 would train no step"),
        (["ppo.temperature=nan"], "ppo.temperature: must be > 0, got nan"),
        (["model.lora.dropout=1.0"], "model.lora.dropout: must be in [0, 1)"),
        (["ppo.critic_warmup_updates=20"], "ppo.critic_warmup_updates: 20 warm-up updates"),
        (["model.tiny.num_heads=3"], "model.tiny.hidden_size: 64 does not split"),
    ],
)
def test_impossible_numbers_from_the_command_line(compose_config, overrides, message):
    """Hydra's typed composition, then the schema: what train.py does before anything loads."""
    with pytest.raises(ConfigError) as caught:
        typed_config(compose_config(overrides))
    assert str(caught.value).startswith(message), caught.value


def test_the_seed_range_is_what_numpy_accepts():
    """transformers.set_seed seeds numpy too, whose seeds are [0, 2**32)."""
    seed = config_module.SEED
    np.random.seed(int(seed.high) - 1)
    with pytest.raises(ValueError):
        np.random.seed(int(seed.high))
    assert seed.contains(0) and not seed.contains(-1) and not seed.contains(seed.high)


def test_scheduler_names_are_transformers_names():
    assert set(config_module.LR_SCHEDULERS) == {kind.value for kind in SchedulerType}


# --- reward functions that misbehave -----------------------------------------------------------


@pytest.mark.parametrize(
    "returned,needle",
    [
        (["good", "bad"], "returned a list whose item 0 is str 'good', not a number"),
        (None, "returned NoneType None, not a list of scores"),
        ("0.5", "returned str '0.5', not a list of scores"),
        ([1.0, None], "returned a list whose item 1 is NoneType None, not a number"),
        ([[1.0, 2.0], [3.0]], "returned a list whose item 0 is list [1.0, 2.0], not a number"),
        ([[1.0], [2.0]], "returned a list whose item 0 is list [1.0], not a number"),
        ([True, False], "returned a list whose item 0 is bool True, not a number"),
        (np.array(["a", "b"]), "returned an array torch cannot read"),
        ({"a": 1.0, "b": 2.0}, "returned dict {'a': 1.0, 'b': 2.0}, not a list of scores"),
        ([1.0, 2.0, 3.0], "returned 3 scores for 2 completions"),
    ],
    ids=[
        "strings",
        "none",
        "a-string",
        "a-none",
        "ragged",
        "nested",
        "bools",
        "str-array",
        "dict",
        "too-many",
    ],  # fmt: skip
)
def test_a_reward_returning_the_wrong_thing_is_named(returned, needle):
    score = checked(lambda prompts, completions: returned, "my_module.my_reward")
    with pytest.raises(RewardError) as caught:
        score(["p1", "p2"], ["c1", "c2"])
    assert str(caught.value).startswith("reward my_module.my_reward ")
    assert needle in str(caught.value), caught.value


@pytest.mark.parametrize(
    "returned",
    [[1, 2.5], (0.0, -1.0), np.array([1.0, 2.0]), [np.float32(1.0), np.int64(2)]],
    ids=["list", "tuple", "array", "numpy-scalars"],
)
def test_a_reward_of_real_numbers_is_accepted(returned):
    scores = checked(lambda prompts, completions: returned, "fn")(["p", "q"], ["a", "b"])
    assert scores.dtype.is_floating_point and scores.tolist() == [float(v) for v in returned]


# --- names that do not exist -------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["pipeline.stages=[]", "stage=pipeline"], "pipeline.stages: is empty"),
        (["pipeline.stages=[sft,sft,ppo]", "stage=pipeline"], "pipeline.stages: sft listed twice"),
        (
            ["stage=ppo", "objective=ppo/objective/score"],
            "objective: 'ppo/objective/score' is not a final metric of stage ppo (did you mean "
            "'ppo/objective/scores'?)",
        ),
        (["stage=sft", "objective=rm/test/accuracy"], "objective: 'rm/test/accuracy' is not"),
        (
            ["stage=ppo", "objective=ppo/eval/score", "ppo.eval_every=3", "ppo.total_updates=10"],
            "objective: 'ppo/eval/score' is measured only at updates that are multiples of "
            "ppo.eval_every=3",
        ),
        (["stage=ppo", "objective=ppo/eval/score", "ppo.eval_every=0"], "objective: 'ppo/eval"),
        (["ppo.checkpoint.best_metric=ppo/eval/scor"], "ppo.checkpoint.best_metric: 'ppo/eval/"),
        (["ppo.stop_token=''"], "ppo.stop_token: must not be empty"),
        (["model.lora.target_modules=[]"], "model.lora.target_modules: name at least one"),
    ],
    ids=[
        "empty-pipeline",
        "stage-twice",
        "objective-typo",
        "objective-of-another-stage",
        "objective-never-measured-last",
        "objective-eval-off",
        "best-metric-typo",
        "empty-stop-token",
        "no-lora-targets",
    ],  # fmt: skip
)
def test_names_that_do_not_exist_are_rejected_before_anything_loads(
    compose_config, overrides, message
):
    with pytest.raises(ConfigError) as caught:
        typed_config(compose_config(overrides))
    assert str(caught.value).startswith(message), caught.value


@pytest.mark.parametrize(
    "overrides",
    [
        ["stage=pipeline", "objective=sft/test/loss"],
        ["stage=pipeline", "objective=eval/policy/score"],
        ["stage=ppo", "objective=ppo/eval/score", "ppo.eval_every=5", "ppo.total_updates=20"],
        ["stage=rm", "objective=rm/test/margin"],
    ],
)
def test_an_objective_the_stages_produce_is_accepted(compose_config, overrides):
    assert typed_config(compose_config(overrides)).objective == overrides[1].split("=")[1]


def tokenizer_with_unknown_token():
    """A word-level tokenizer whose unknown words encode to <unk> (as SentencePiece and
    WordPiece vocabularies do; the tiny model's byte fallback has no unknown token)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    vocabulary = {"<unk>": 0, "<eos>": 1, "hello": 2, "world": 3, ".": 4}
    backend = Tokenizer(WordLevel(vocabulary, unk_token="<unk>"))
    backend.pre_tokenizer = WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<eos>")


def test_a_stop_token_outside_the_vocabulary_is_refused():
    from rlhf.ppo.trainer import stop_token_id

    tokenizer = tokenizer_with_unknown_token()
    assert stop_token_id(tokenizer, ".") == 4 and stop_token_id(tokenizer, None) == 1
    for missing in ("<|stop|>", "goodbye"):
        with pytest.raises(ConfigError) as caught:
            stop_token_id(tokenizer, missing)
        assert str(caught.value).startswith(f"ppo.stop_token: {missing!r} is not in this")
    with pytest.raises(ConfigError, match="encodes to 2 tokens"):
        stop_token_id(tokenizer, "hello world")


@pytest.mark.parametrize(
    "settings,message",
    [
        (
            {"target_modules": ["q_proj", "v_prj"]},
            "model.lora.target_modules: 'v_prj' names no module of the model (did you mean "
            "'v_proj'?); its linear layers: down_proj, gate_proj, k_proj, lm_head, o_proj",
        ),
        ({"target_modules": ["query"]}, "model.lora.target_modules: 'query' names no module"),
        ({"modules_to_save": ["lm_haed"]}, "model.lora.modules_to_save: 'lm_haed' names no"),
    ],
)
def test_lora_names_that_match_no_module_are_refused(tmp_path, settings, message):
    from rlhf.config import LoraSettings, ModelConfig
    from rlhf.models.checks import check_lora_targets
    from rlhf.models.loading import load_model_and_tokenizer

    model, _ = load_model_and_tokenizer(ModelConfig(), tmp_path)
    for good in (["q_proj", "v_proj"], ["model.layers.0.self_attn.q_proj"], ["mlp.up_proj"]):
        check_lora_targets(model, LoraSettings(enabled=True, target_modules=good))
    with pytest.raises(ConfigError) as caught:
        check_lora_targets(model, LoraSettings(enabled=True, **settings))
    assert str(caught.value).startswith(message), caught.value
