"""Bad inputs, round 2 (issue 14), checked in process where the check lives: impossible numbers
(every numeric field of every schema, found by walking the schemas), names that do not exist,
the wrong kind of model, data, misbehaving reward functions. tests/reliability/test_bad_inputs.py runs the
same kinds end to end through train.py (exit code 2, one line, nothing finished)."""

from __future__ import annotations

import dataclasses
import math
import typing
from pathlib import Path

import numpy as np
import pytest
from transformers import SchedulerType

from rlhf import config as config_module
from rlhf.app import typed_config
from rlhf.config import Config, Range
from rlhf.errors import ConfigError, RewardError
from rlhf.rewards import checked
from rlhf.schemas.fields import ranges_of
from tests.helpers import whole_ppo_checkpoint

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
    """No int or float field is left unchecked: each declares its range (no exemptions
    are needed: a field that is off when null is None-able and checked when set)."""
    assert len(NUMERIC_FIELDS) > 90  # the walk reaches every section (model.lora, ppo.health...)
    unchecked = [
        key for key, instance, name, *_ in NUMERIC_FIELDS if name not in ranges_of(instance)
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
    for bad in outside(ranges_of(instance)[name], element)
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
    from rlhf.ppo.validation import stop_token_id

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


# --- the wrong kind of model, broken model folders ---------------------------------------------


@pytest.fixture
def language_model(tmp_path):
    """A tiny causal LM saved as a stage would save it (config, safetensors, tokenizer)."""
    from rlhf.config import ModelConfig
    from rlhf.models.loading import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(ModelConfig(), tmp_path / "cache")
    folder = tmp_path / "lm"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def no_tokenizer(folder):
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (folder / name).unlink(missing_ok=True)
    return "has no tokenizer files (one of tokenizer.json"


def corrupt_config(folder):
    (folder / "config.json").write_text('{"model_type": "llama", "hidden_size": ')
    return "config.json is not valid JSON"


def truncated_weights(folder):
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return "model.safetensors is truncated"


def no_model_type(folder):
    (folder / "config.json").write_text('{"hidden_size": 64}')
    return "config.json names no model_type"


BROKEN_FOLDERS = [no_tokenizer, corrupt_config, truncated_weights, no_model_type]


@pytest.mark.parametrize("break_folder", BROKEN_FOLDERS)
def test_a_broken_model_folder_is_one_line_naming_it_in_chat(language_model, break_folder, capsys):
    from rlhf.chat import main as chat_main

    needle = break_folder(language_model)
    assert chat_main([str(language_model), "--prompt", "吃了没？"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: model folder {language_model}") and needle in line, line


@pytest.mark.parametrize("break_folder", BROKEN_FOLDERS)
def test_a_broken_model_folder_is_a_model_load_error_in_the_stages(language_model, break_folder):
    """What every stage (eval's policy and baseline, PPO's start, a reward model) loads with."""
    from rlhf.config import ModelConfig
    from rlhf.errors import ModelLoadError
    from rlhf.models.loading import load_model_and_tokenizer

    needle = break_folder(language_model)
    with pytest.raises(ModelLoadError) as caught:
        load_model_and_tokenizer(ModelConfig(name_or_path=str(language_model)), ".")
    assert str(caught.value).startswith(f"model folder {language_model}") and needle in str(
        caught.value
    )


def test_a_language_model_is_not_a_reward_model(language_model):
    """transformers would add a random score head (and only log it): PPO would train against
    random rewards."""
    from rlhf.config import ModelConfig
    from rlhf.errors import ModelLoadError
    from rlhf.rewards.reward_model import RewardModelScorer

    with pytest.raises(ModelLoadError) as caught:
        RewardModelScorer(language_model, None, ModelConfig())
    assert str(caught.value) == (
        f"model folder {language_model} is not a reward model: it has no trained score head "
        "(score.weight would start random); point to an rm stage's model folder"
    )


def test_a_reward_model_is_not_a_language_model(language_model, tmp_path):
    from rlhf.config import ModelConfig
    from rlhf.errors import ModelLoadError
    from rlhf.models.loading import load_model_and_tokenizer

    reward, tokenizer = load_model_and_tokenizer(
        ModelConfig(name_or_path=str(language_model)), ".", kind="reward", new_head=True
    )
    reward.save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    with pytest.raises(ModelLoadError, match="holds a reward model .sequence classifier., not a"):
        load_model_and_tokenizer(ModelConfig(name_or_path=str(tmp_path / "rm")), ".")
    # and, read as a reward model, it keeps its trained head: nothing is new
    scorer_settings = ModelConfig(name_or_path=str(tmp_path / "rm"))
    again, _ = load_model_and_tokenizer(scorer_settings, ".", kind="reward")
    assert torch_equal(again.score.weight, reward.score.weight)


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a.detach(), b.detach()))


# --- data --------------------------------------------------------------------------------------

ROWS = [
    {"question": "你好", "good": "你好呀", "bad": "滚"},
    {"question": "吃了没", "good": "吃了，谢谢", "bad": "关你屁事"},
]


def gbk_jsonl(folder):
    import json

    path = folder / "gbk.jsonl"
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in ROWS)
    path.write_bytes(text.encode("gbk"))
    return path, f"data.train_file: {path} is not UTF-8 text (byte 0x"


def gbk_csv(folder):
    path = folder / "gbk.csv"
    lines = ["question,good,bad", *(",".join(row.values()) for row in ROWS)]
    path.write_bytes("\n".join(lines).encode("gbk"))
    return path, f"data.train_file: {path} is not UTF-8 text (byte 0xc4 on line 2)"


def latin1_on_line_3(folder):
    import json

    path = folder / "mixed.jsonl"
    rows = [*ROWS, {"question": "café", "good": "oui", "bad": "non"}]
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    path.write_bytes(_mixed(text))
    return path, "(byte 0xe9 on line 3)"


def _mixed(text: str) -> bytes:
    """UTF-8 except the last line, which is Latin-1 (a file appended to by another tool)."""
    *head, last = text.splitlines(keepends=True)
    return "".join(head).encode("utf-8") + last.encode("latin-1")


def parquet_with_numbers(folder):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = folder / "numbers.parquet"
    table = pa.table({"question": [1, 2], "good": ["a", "b"], "bad": ["c", "d"]})
    pq.write_table(table, path)
    return path, "column 'question' (prompt) holds int values, not text (row 0: 1)"


def parquet_with_lists(folder):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = folder / "lists.parquet"
    table = pa.table({"question": ["q1", "q2"], "good": [["a"], ["b"]], "bad": ["c", "d"]})
    pq.write_table(table, path)
    return path, "column 'good' (chosen) holds list values, not text (row 0: ['a'])"


def a_folder(folder):
    path = folder / "data.jsonl"
    path.mkdir()
    return path, f"data.train_file: {path} is a folder, not a data file"


@pytest.mark.parametrize(
    "make_file",
    [gbk_jsonl, gbk_csv, latin1_on_line_3, parquet_with_numbers, parquet_with_lists, a_folder],
)
def test_a_data_file_that_cannot_be_read_is_one_line_naming_it(tmp_path, make_file):
    from rlhf.config import ColumnMap, DataConfig
    from rlhf.data.loading import load_preference_data
    from rlhf.errors import DataError

    path, needle = make_file(tmp_path)
    columns = ColumnMap(prompt="question", chosen="good", rejected="bad")
    with pytest.raises(DataError) as caught:
        load_preference_data(DataConfig(train_file=str(path), columns=columns))
    assert needle in str(caught.value) and "\n" not in str(caught.value), caught.value


def test_a_test_file_that_is_a_folder_names_data_test_file(tmp_path):
    from rlhf.config import DataConfig
    from rlhf.data.loading import load_preference_data
    from rlhf.errors import DataError

    train = tmp_path / "train.jsonl"
    train.write_text('{"prompt": "p", "chosen": "c", "rejected": "r"}\n', encoding="utf-8")
    (tmp_path / "test").mkdir()
    config = DataConfig(train_file=str(train), test_file=str(tmp_path / "test"))
    with pytest.raises(DataError, match=r"^data.test_file: .*/test is a folder, not a data file"):
        load_preference_data(config)


# --- folders from earlier runs -----------------------------------------------------------------


def whole_trl_checkpoint(folder, weights="model.safetensors"):
    import json

    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    save_file({"w": torch.zeros(3)}, folder / weights)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 1}))
    return folder


def test_a_broken_newest_ppo_checkpoint_falls_back_to_the_whole_one(tmp_path):
    from rlhf.runs.resume import PPO_CHECKPOINTS

    stage = tmp_path / "ppo"
    good = whole_ppo_checkpoint(stage / "checkpoints" / "update-000002")
    newest = whole_ppo_checkpoint(stage / "checkpoints" / "update-000004")
    (newest / "state.pt").unlink()
    (stage / "checkpoints" / "update-final").mkdir()  # stray names are not checkpoints
    (stage / "checkpoints" / "update-000009.bak").mkdir()
    point = PPO_CHECKPOINTS.resume_point(stage)
    assert point is not None and point.checkpoint == good and point.step == 2
    assert PPO_CHECKPOINTS.broken(stage) == [f"{newest}: no state.pt"]


@pytest.mark.parametrize(
    "damage,problem",
    [
        (lambda c: (c / "model.safetensors").unlink(), "no weights (*.safetensors, global_step*"),
        (lambda c: (c / "trainer_state.json").write_text("{"), "trainer_state.json is not a"),
        (lambda c: (c / "trainer_state.json").write_text("[]"), "trainer_state.json is not a"),
        (
            lambda c: (c / "model.safetensors").write_bytes(
                (c / "model.safetensors").read_bytes()[:-4]
            ),
            "model.safetensors is truncated",
        ),
    ],
    ids=["no-weights", "corrupt-state", "state-not-an-object", "truncated-weights"],
)
def test_a_trl_checkpoint_that_is_not_whole_is_not_resumed(tmp_path, damage, problem):
    from rlhf.runs.resume import TRL_CHECKPOINTS, check_resumable

    stage = tmp_path / "sft"
    checkpoint = whole_trl_checkpoint(stage / "trainer" / "checkpoint-4")
    assert TRL_CHECKPOINTS.resume_point(stage).checkpoint == checkpoint
    damage(checkpoint)
    assert TRL_CHECKPOINTS.resume_point(stage) is None
    with pytest.raises(ConfigError) as caught:
        check_resumable([("sft", TRL_CHECKPOINTS)], False, tmp_path)
    assert str(caught.value).startswith(f"resume: no whole checkpoint in {tmp_path}: {checkpoint}")
    assert problem in str(caught.value)


def test_a_peft_adapter_checkpoint_counts_as_whole(tmp_path):
    from rlhf.runs.resume import TRL_CHECKPOINTS

    checkpoint = whole_trl_checkpoint(
        tmp_path / "rm" / "trainer" / "checkpoint-2", "adapter_model.safetensors"
    )
    assert TRL_CHECKPOINTS.resume_point(tmp_path / "rm").checkpoint == checkpoint


@pytest.mark.parametrize(
    "record,reason",
    [
        ('{"status": "compl', "is not a valid run record (JSONDecodeError)"),
        ('{"status": "complete"}', "is not a valid run record (KeyError)"),
        ("[1, 2]", "is not a valid run record (TypeError)"),
        (None, "is missing (FileNotFoundError)"),
    ],
)
def test_a_complete_stage_with_a_broken_run_record(tmp_path, record, reason):
    from rlhf.errors import RunFolderError
    from rlhf.runs.folders import completed_metrics

    (tmp_path / "COMPLETE").write_text("done\n")
    if record is not None:
        (tmp_path / "run_info.json").write_text(record)
    with pytest.raises(RunFolderError) as caught:
        completed_metrics(tmp_path)
    assert str(caught.value).startswith(f"{tmp_path / 'run_info.json'} {reason}")


def test_compare_names_broken_job_files_and_compares_the_other_jobs(tmp_path, capsys):
    import json

    from rlhf.sweeps import compare

    def job(name: str, record: str | None, config: str, score: float | None = None):
        folder = tmp_path / name
        (folder / ".hydra").mkdir(parents=True)
        (folder / ".hydra" / "config.yaml").write_text(config)
        if record is not None:
            (folder / "job.json").write_text(record)
        if score is not None:
            (folder / "ppo").mkdir()
            update = {"step": 1, "ppo/objective/scores": score, "ppo/objective/kl": 0.5}
            (folder / "ppo" / "metrics.jsonl").write_text(json.dumps(update) + "\n")
        return folder

    good_config = "ppo: {kl_coef: 0.1, cliprange: 0.2}\n"
    job("0_a", json.dumps({"job": 0, "label": "a", "status": "complete"}), good_config, 1.5)
    broken_record = job("1_b", '{"job": 1, "status": "compl', good_config, 2.5)
    broken_config = job("2_c", json.dumps({"job": 2, "status": "complete"}), "ppo: [kl: 0.1\n", 3.5)
    not_a_mapping = job("3_d", "[1, 2]", "just a string\n")
    assert compare.main([str(tmp_path), "--no-wandb"]) == 3  # a job could not be read
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("unreadable: job ") for line in lines)
    assert lines[0].startswith(f"unreadable: job 1 (b): {broken_record / 'job.json'} cannot be read (JSON")  # fmt: skip
    assert lines[1].startswith(f"unreadable: job 2 (c): {broken_config / '.hydra/config.yaml'} cannot")  # fmt: skip
    assert lines[2] == (
        f"unreadable: job 3 (d): {not_a_mapping / 'job.json'} cannot be read (it holds list, not a "
        f"mapping); {not_a_mapping / '.hydra/config.yaml'} cannot be read (it holds str, not a mapping)"
    )
    rows = list(csv_rows(tmp_path / "compare" / "table.csv"))
    assert [(r["status"], r["score"]) for r in rows] == [
        ("complete", "1.5"), ("unreadable", ""), ("unreadable", ""), ("unreadable", ""),
    ]  # fmt: skip
    assert "4 jobs (1 complete, 0 running, 0 failed, 3 unreadable)" in captured.out


def csv_rows(path):
    import csv

    with path.open(encoding="utf-8") as handle:
        yield from csv.DictReader(handle)


# --- paths and overrides -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "key,make_path,message",
    [
        ("cache_dir", lambda t: t / "file.txt", "cache_dir: {t}/file.txt is a file, not a folder"),
        (
            "pipeline.stage_cache_dir",
            lambda t: t / "file.txt" / "cache",
            "pipeline.stage_cache_dir: {t}/file.txt is a file, not a folder ({t}/file.txt/cache "
            "would be inside it)",
        ),
        (
            "output_dir",
            lambda t: t / ("n" * 300) / "run",
            "output_dir: the name nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn... is 300 bytes, "
            "longer than file systems allow (255)",
        ),
        ("logger.dir", lambda t: t / "file.txt" / "wandb", "logger.dir: {t}/file.txt is a file"),
    ],
)
def test_a_folder_setting_that_cannot_be_a_folder_names_its_key(
    compose_config, tmp_path, key, make_path, message
):
    from rlhf.app import check_folders

    (tmp_path / "file.txt").write_text("a file")
    config = typed_config(compose_config([f"{key}={make_path(tmp_path)}"]))
    with pytest.raises(ConfigError) as caught:
        check_folders(config)
    assert str(caught.value).startswith(message.format(t=tmp_path)), caught.value
    check_folders(typed_config(compose_config([f"{key}={tmp_path / 'new' / 'folder'}"])))


@pytest.mark.parametrize(
    "override,hydra_says",
    [
        ("ppo.kl_coef=[0.1", "no viable alternative at input '[0.1'"),
        ("ppo.kl_coef=0.1)", "extraneous input ')' expecting <EOF>"),
        ("data.columns={prompt:q", "no viable alternative at input '{prompt:q'"),
        ("a b=3", "LexerNoViableAltException: a b=3"),
    ],
)
def test_an_unparseable_override_is_named_next_to_hydras_message(override, hydra_says):
    from hydra.errors import OverrideParseException

    from rlhf.runtime.error_lines import describe_error
    from tests.helpers import compose_with_hydra

    with pytest.raises(OverrideParseException) as caught:
        compose_with_hydra([override])
    line = describe_error(caught.value)
    assert (
        line.startswith(f"error: cannot parse the override {override!r}: ") and hydra_says in line
    )
    assert "\n" not in line


@pytest.mark.parametrize(
    "code,needle",
    [
        (28, "no space left on the device"),  # ENOSPC
        (36, "a file or folder name is longer than the file system allows"),  # ENAMETOOLONG
        (20, "a part of the path is a file, not a folder"),  # ENOTDIR
        (13, "permission denied"),  # EACCES
    ],
)
def test_file_system_errors_are_one_line_and_other_os_errors_keep_their_traceback(code, needle):
    import errno
    import os

    from rlhf.runtime.error_lines import describe_error, is_path_error

    assert errno.errorcode[code]  # the numbers are Linux's
    exc = OSError(code, os.strerror(code), "/runs/x/model/model.safetensors")
    assert is_path_error(exc)
    line = describe_error(exc)
    assert line.startswith(f"error: /runs/x/model/model.safetensors: {needle}") and "\n" not in line
    assert not is_path_error(OSError(errno.ECONNREFUSED, "refused"))
    assert not is_path_error(ValueError("not an OS error"))


@pytest.mark.parametrize("override", ["=3", "+=1", "~=x"])
def test_an_override_without_a_key_is_named(override):
    from rlhf.app import check_override_keys

    check_override_keys(["stage=sft", "--multirun", "+foo=1", "~ppo.seed", "--cfg", "job"])
    with pytest.raises(ConfigError) as caught:
        check_override_keys(["stage=sft", override])
    assert (
        str(caught.value) == f"cannot parse the override {override!r}: it names no key (key=value)"
    )


# --- faults while writing ----------------------------------------------------------------------


def test_a_full_disk_during_a_checkpoint_keeps_the_previous_one(
    tiny_sft_model, tmp_path, monkeypatch
):
    """Simulated with the fault point `RLHF_FAULT=ppo:disk_full_during_checkpoint:2`: the
    OSError(ENOSPC) a full disk gives, raised half-way through writing checkpoint 2 (its tensors
    written, its optimiser state not). train.py turns it into one line (the test above)."""
    from safetensors.torch import load_file

    from rlhf.config import CheckpointConfig
    from rlhf.ppo.checkpoint import Checkpointer
    from rlhf.runs.resume import PPO_CHECKPOINTS, ppo_checkpoint_problem, ppo_checkpoints
    from rlhf.runtime.error_lines import describe_error
    from tests.helpers.ppo import make_config, make_trainer

    config = make_config(tiny_sft_model, total_updates=3, eval_every=0, log_samples_every=0)
    trainer = make_trainer(config, tmp_path)
    settings = CheckpointConfig(every=1, best_metric=None)
    monkeypatch.setenv("RLHF_FAULT", "ppo:disk_full_during_checkpoint:2")
    with pytest.raises(OSError) as caught:
        trainer.train(Checkpointer(settings, tmp_path, 3, run_id=None))
    assert describe_error(caught.value) == (
        f"error: {tmp_path}/checkpoints/.tmp-update-000002/state.pt: no space left on the "
        "device (No space left on device)"
    )
    monkeypatch.delenv("RLHF_FAULT")
    previous = tmp_path / "checkpoints" / "update-000001"
    assert ppo_checkpoints(tmp_path) == [previous] and ppo_checkpoint_problem(previous) is None
    assert PPO_CHECKPOINTS.resume_point(tmp_path).checkpoint == previous
    # usable: a fresh trainer continues from it, with its weights
    again = make_trainer(config, tmp_path / "again")
    Checkpointer(settings, tmp_path, 3, run_id=None).resume(again, previous)  # clears .tmp-*
    assert again.update == 1 and not list((tmp_path / "checkpoints").glob(".tmp-*"))
    saved = load_file(previous / "trainable.safetensors")
    restored = again.trainable_tensors()
    assert saved.keys() == restored.keys()
    assert all(torch_equal(saved[name], restored[name]) for name in saved)


def test_a_write_error_while_saving_a_model_keeps_the_folder_that_was_there(
    language_model, tmp_path, monkeypatch
):
    """Simulated by a save_pretrained that writes half a weights file, then raises ENOSPC."""
    import errno
    import os

    from rlhf.config import ModelConfig
    from rlhf.models.checks import check_model_folder
    from rlhf.models.loading import load_model_and_tokenizer
    from rlhf.models.saving import save_model

    model, tokenizer = load_model_and_tokenizer(ModelConfig(name_or_path=str(language_model)), ".")
    final = tmp_path / "stage" / "model"
    save_model(model, tokenizer, final)  # a first save (the stage's earlier attempt)
    before = (final / "model.safetensors").read_bytes()

    def disk_full(folder, **kwargs):
        Path(folder).mkdir(parents=True)
        (Path(folder) / "model.safetensors").write_bytes(before[: len(before) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder))

    monkeypatch.setattr(model, "save_pretrained", disk_full)
    with pytest.raises(OSError):
        save_model(model, tokenizer, final)
    assert check_model_folder(final) == final  # the earlier model, whole
    assert (final / "model.safetensors").read_bytes() == before
    assert [p.name for p in final.parent.iterdir()] == ["model"]  # no half-written folder left
    shutil_free = tmp_path / "fresh" / "model"
    monkeypatch.setattr(model, "save_pretrained", disk_full)
    with pytest.raises(OSError):
        save_model(model, tokenizer, shutil_free)
    assert not shutil_free.exists() and list(shutil_free.parent.iterdir()) == []
