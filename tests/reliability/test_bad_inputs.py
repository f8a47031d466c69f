"""Every kind of bad input, end to end through train.py: a non-zero exit (2), one line naming the
key, file, column or value, and nothing left behind that looks finished (no COMPLETE marker, no
model folder, run_info.json marked failed where the stage had started).

The runs are forked from a warm interpreter (`warm_train`, tests/helpers/train_forks.py); one run in a
fresh interpreter checks that nothing there depends on the warm imports."""

from __future__ import annotations

import json
import re

import pytest

from rlhf.app import typed_config
from rlhf.errors import ConfigError, RewardError
from rlhf.rewards import checked
from tests.helpers import bad_rewards, error_lines, run_train, whole_ppo_checkpoint
from tests.helpers.ppo import make_config, make_trainer

PPO_TINY = [
    "stage=ppo", "model=tiny", "logger=none", "ppo.total_updates=1", "ppo.eval_every=0",
    "ppo.batch_size=4", "ppo.micro_batch_size=2", "ppo.max_new_tokens=4", "reward=keywords",
]  # fmt: skip


def assert_one_line_and_nothing_finished(result, run_dir, stage: str, needle: str) -> str:
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = error_lines(result)
    assert line.startswith("error: ") and needle in line, line
    assert not (run_dir / stage / "COMPLETE").exists()
    assert not (run_dir / stage / "model").exists()
    info_file = run_dir / stage / "run_info.json"
    if info_file.exists():  # the stage had started: its record says it failed, and why
        info = json.loads(info_file.read_text())
        assert info["status"] == "failed" and needle in info["error"]
    return line


# --- config: rejected before anything loads ------------------------------------------------


@pytest.mark.parametrize(
    "override,needle",
    [
        ("ppo.klcoef=0.1", "unknown config key 'ppo.klcoef' (did you mean 'ppo.kl_coef'?)"),
        ("sft.learning_rate=abc", "sft.learning_rate"),
        ("model=nosuchmodel", "model/nosuchmodel"),
        ("+foo=1", "unknown config key 'foo'"),
        ("+model.lora.rr=3", "unknown config key 'model.lora.rr'"),
        ("ppo.cliprange=0", "ppo.cliprange: must be > 0, got 0"),
        (
            "ppo.batch_size=7",
            "ppo.batch_size: batch_size × samples_per_prompt (7) is not divisible",
        ),
        ("ppo.health.stop_on=[kl_maxx]", "ppo.health.stop_on: 'kl_maxx' is not one of"),
        ("eval.judge={kind:reward_model}", "eval.judge.model_path: set the folder"),
        ("eval/judge=nosuchjudge", "eval/judge/nosuchjudge"),
        (
            "eval.judge={kind:weighted,components:[{weight:1,kind:function}]}",
            "eval.judge.components[0].function: needs a _target_",
        ),
        (
            "eval.judge={kind:function,function:{_target_:m.f},scale:2}",
            "eval.judge.scale: a judge is scored raw",
        ),
        ("ppo.critic=none", "ppo.critic: gae needs a critic for its values"),
        ("ppo.total_updates=-5", "ppo.total_updates: must be >= 1, got -5"),
        ("ppo.length_sampler=[8,2]", "ppo.length_sampler: [min, max] is reversed: [8, 2]"),
        ("ppo.kl_coef=[0.1", "cannot parse the override 'ppo.kl_coef=[0.1': no viable"),
    ],
    ids=[
        "unknown-key",
        "mistyped-value",
        "unknown-option",
        "added-key",
        "added-nested-key",
        "cliprange-zero",
        "batch-not-divisible",
        "unknown-alarm",
        "judge-rm-without-folder",
        "unknown-judge",
        "judge-component-without-target",
        "judge-scaled",
        "gae-without-critic",
        "negative-updates",
        "reversed-range",
        "unparseable-override",
    ],  # fmt: skip
)
def test_config_errors(warm_train, tmp_path, override, needle):
    run_dir = tmp_path / "run"
    result = warm_train(["stage=sft", override], run_dir)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], result.stderr
    assert not (run_dir / "sft").exists()  # nothing started


@pytest.mark.parametrize(
    "override,key",
    [
        ("ppo.cliprange=-0.1", "ppo.cliprange"),
        ("ppo.micro_batch_size=0", "ppo.micro_batch_size"),
        ("ppo.kl_estimator=k9", "ppo.kl_estimator"),
        ("ppo.on_nonfinite=ignore", "ppo.on_nonfinite"),
        ("ppo.checkpoint.keep_last=0", "ppo.checkpoint.keep_last"),
        ("stage=sfft", "stage"),
        ("model.dtype=float8", "model.dtype"),
        ("logger.backend=wand", "logger.backend"),
        ("data.overlong=cut", "data.overlong"),
        ("sft.learning_rate=0", "sft.learning_rate"),
        ("rm.max_train_samples=0", "rm.max_train_samples"),
        ("rm.curt_negatives=1.5", "rm.curt_negatives"),
        ("rm.truncated_negatives=-0.1", "rm.truncated_negatives"),
        ("eval.hacking_margin=2", "eval.hacking_margin"),
        ("eval.length_drift_factor=0.5", "eval.length_drift_factor"),
        ("ppo.health.length_drift_max=1", "ppo.health.length_drift_max"),
        ("ppo.rollout.engine=sglang", "ppo.rollout.engine"),
        ("ppo.rollout.correction=token_truncate", "ppo.rollout.correction"),
        ("ppo.rollout.correction=token_clip", "ppo.rollout.correction"),
        ("ppo.rollout.correction_max=0", "ppo.rollout.correction_max"),
        ("eval.judge={kindd:function}", "eval.judge.kindd"),
        ("eval.judge={kind:function}", "eval.judge.function"),
        ("host_heap=keep", "host_heap"),
    ],
)
def test_impossible_values_are_rejected_with_their_key(compose_config, override, key):
    """The same schema checks as above, without a process each (train.py runs typed_config)."""
    with pytest.raises(ConfigError) as caught:
        typed_config(compose_config([override]))
    assert str(caught.value).startswith(key)


# --- resume ----------------------------------------------------------------------------------


def test_a_fresh_interpreter_reports_the_same_single_line(tmp_path):
    result = run_train(["stage=sft", "ppo.klcoef=0.1"], tmp_path / "run")
    assert result.returncode == 2
    (line,) = [line for line in result.stderr.splitlines() if line.strip()]
    assert line == "error: unknown config key 'ppo.klcoef' (did you mean 'ppo.kl_coef'?)"


def test_a_run_folder_inside_a_file_is_one_line(warm_train, tmp_path):
    """Hydra makes the run folder before any of our code runs."""
    (tmp_path / "notes.txt").write_text("a file")
    result = warm_train(["stage=sft", "logger=none"], tmp_path / "notes.txt" / "run")
    assert result.returncode == 2
    (line,) = [line for line in result.stderr.splitlines() if line.strip()]
    assert line == (
        f"error: {tmp_path}/notes.txt/run: a part of the path is a file, not a folder "
        "(Not a directory)"
    )


def test_resume_path_that_does_not_exist(warm_train, tmp_path):
    result = warm_train(["stage=ppo", f"resume={tmp_path / 'gone'}"], tmp_path / "run")
    assert result.returncode == 2
    (line,) = error_lines(result)
    assert f"resume: run folder {tmp_path / 'gone'} does not exist" in line


def test_resume_path_with_no_checkpoint(warm_train, tmp_path):
    stopped = tmp_path / "stopped"
    (stopped / "ppo").mkdir(parents=True)
    (stopped / "ppo" / "run_info.json").write_text('{"status": "failed"}')
    result = warm_train(["stage=ppo", f"resume={stopped}"], tmp_path / "run")
    assert result.returncode == 2
    (line,) = error_lines(result)
    assert f"resume: no checkpoint in {stopped}/ppo/checkpoints" in line


def truncated_tensors(checkpoint):
    """A checkpoint with all its files, the tensors cut to one byte (a copy that stopped)."""
    (checkpoint / "trainable.safetensors").write_bytes(b"\x08")
    (checkpoint / "state.pt").write_bytes(b"not read")
    (checkpoint / "trainer_state.json").write_text('{"update": 2}')


@pytest.mark.parametrize(
    "break_checkpoint,needle",
    [
        (lambda c: None, "update-000002: no trainable.safetensors"),  # an empty folder
        (truncated_tensors, "trainable.safetensors is 1 bytes long, too short for a"),
    ],
    ids=["empty", "truncated"],
)
def test_resume_from_a_broken_checkpoint_names_it(warm_train, tmp_path, break_checkpoint, needle):
    stopped = tmp_path / "stopped"
    checkpoint = stopped / "ppo" / "checkpoints" / "update-000002"
    checkpoint.mkdir(parents=True)
    (checkpoint.parent / "update-latest").mkdir()  # a stray name: not a checkpoint of ours
    break_checkpoint(checkpoint)
    result = warm_train(["stage=ppo", f"resume={stopped}"], tmp_path / "run")
    assert result.returncode == 2
    (line,) = error_lines(result)
    assert line.startswith(f"error: resume: no whole checkpoint in {stopped}: ") and needle in line


def test_resume_of_a_complete_stage_with_a_corrupt_run_record(warm_train, tmp_path):
    stopped = tmp_path / "stopped"
    (stopped / "sft").mkdir(parents=True)
    (stopped / "sft" / "COMPLETE").write_text("2026-01-01T00:00:00\n")
    (stopped / "sft" / "run_info.json").write_text('{"status": "complete", "final_met')
    result = warm_train(["stage=sft", f"resume={stopped}"], tmp_path / "run")
    assert result.returncode == 2
    (line,) = error_lines(result)
    assert line == (
        f"error: {stopped}/sft/run_info.json is not a valid run record (JSONDecodeError), but "
        f"{stopped}/sft is marked COMPLETE: delete {stopped}/sft/COMPLETE to run the stage "
        "again, or restore the file"
    )


# --- data ------------------------------------------------------------------------------------


def write_file(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def rows_file(tmp_path, rows: list[dict]) -> str:
    lines = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    return write_file(tmp_path, "rows.jsonl", lines)


GOOD_ROWS = [{"question": f"问题{i}？", "chosen": "滚。", "rejected": "好的。"} for i in range(4)]


@pytest.mark.parametrize(
    "make_overrides,needle",
    [
        (lambda tmp: ["data.train_file=experiments/nope/train.jsonl"],
         "data.train_file: file "),
        (lambda tmp: [f"data.train_file={write_file(tmp, 'empty.jsonl', '')}"],
         "empty.jsonl has no rows"),
        (lambda tmp: ["data.columns.chosen=answer"], "data.columns.chosen: column 'answer' not in"),
        (lambda tmp: [f"data.train_file={rows_file(tmp, [*GOOD_ROWS, {**GOOD_ROWS[0], 'chosen': ' '}])}",
                      "data.test_file=null"],
         "row 4 has an empty 'chosen'"),
        (lambda tmp: ["data.max_prompt_length=3"], "no train row fits max_prompt_length=3"),
    ],
    ids=["missing-file", "empty-file", "missing-column", "empty-string-row", "all-prompts-too-long"],
)  # fmt: skip
def test_data_errors(warm_train, tmp_path, make_overrides, needle):
    run_dir = tmp_path / "run"
    result = warm_train(["stage=sft", "logger=none", *make_overrides(tmp_path)], run_dir)
    assert_one_line_and_nothing_finished(result, run_dir, "sft", needle)


# --- models ----------------------------------------------------------------------------------


def folder_without_weights(tmp_path) -> str:
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (folder / "pytorch_model.bin").write_bytes(b"never unpickled")
    return str(folder)


@pytest.mark.parametrize(
    "make_args,stage,needle",
    [
        (lambda tmp: ["stage=sft", f"model.name_or_path={tmp}/no/such/model"], "sft",
         "no/such/model does not exist"),
        (lambda tmp: ["stage=sft", f"model.name_or_path={folder_without_weights(tmp)}"], "sft",
         "holds no *.safetensors weights"),
        (lambda tmp: ["stage=ppo"], "ppo", "run/rm/model does not exist"),  # no RM trained yet
        (lambda tmp: ["stage=eval"], "eval", "run/sft/model does not exist"),  # no policy yet
    ],
    ids=["missing-folder", "no-weights", "missing-reward-model", "missing-policy"],
)  # fmt: skip
def test_model_errors(warm_train, tmp_path, make_args, stage, needle):
    run_dir = tmp_path / "run"
    result = warm_train([*make_args(tmp_path), "logger=none"], run_dir)
    assert_one_line_and_nothing_finished(result, run_dir, stage, needle)


@pytest.mark.parametrize(
    "make_judge,needle",
    [
        (lambda tmp: "{kind:function,function:{_target_:no.such.judge}}",
         "eval.judge.function._target_: cannot import 'no.such.judge'"),
        (lambda tmp: f"{{kind:classifier,classifier:{tmp}/no/classifier}}",
         "eval.judge.classifier: cannot load"),
        (lambda tmp: f"{{kind:reward_model,model_path:{tmp}/no/rm}}",
         "eval.judge.model_path: folder"),
        (lambda tmp: f"{{kind:weighted,components:[{{kind:reward_model,model_path:{tmp}/gone}}]}}",
         "eval.judge.components[0].model_path: folder"),
    ],
    ids=["unimportable-function", "missing-classifier", "missing-rm", "missing-component-rm"],
)  # fmt: skip
def test_judge_errors_stop_the_eval_stage_before_a_model_loads(
    warm_train, tmp_path, make_judge, needle
):
    """A judge that cannot be built: one line naming the eval.judge key, exit 2, before the
    policies load (there are none here: a policy error would come first otherwise)."""
    run_dir = tmp_path / "run"
    args = ["stage=eval", "logger=none", "reward=keywords", f"eval.judge={make_judge(tmp_path)}"]
    result = warm_train(args, run_dir)
    assert_one_line_and_nothing_finished(result, run_dir, "eval", needle)


def test_a_language_model_as_the_reward_model_trains_nothing(warm_train, tmp_path, tiny_sft_model):
    """transformers would give the causal LM a random score head: PPO against random rewards."""
    run_dir = tmp_path / "run"
    reward = ["reward=reward_model", f"reward.model_path={tiny_sft_model}"]
    result = warm_train([*PPO_TINY[:-1], *reward, "ppo.critic_init=policy"], run_dir)
    needle = f"model folder {tiny_sft_model} is not a reward model: it has no trained score head"
    assert_one_line_and_nothing_finished(result, run_dir, "ppo", needle)


# --- reward functions ------------------------------------------------------------------------


def test_reward_returning_nan_stops_the_ppo_stage(warm_train, tmp_path):
    run_dir = tmp_path / "run"
    result = warm_train(
        [*PPO_TINY, "reward.function._target_=tests.helpers.bad_rewards.nan_scores"], run_dir
    )
    needle = (
        "reward tests.helpers.bad_rewards.nan_scores returned 4 non-finite score(s) (NaN or inf)"
    )
    assert_one_line_and_nothing_finished(result, run_dir, "ppo", needle)
    assert not (run_dir / "ppo" / "checkpoints").exists()


@pytest.mark.parametrize(
    "function,needle",
    [
        (bad_rewards.raises, "raised ConnectionError: reward service unreachable"),
        (bad_rewards.one_score, "returned 1 scores for 8 completions"),
        (bad_rewards.nan_scores, "returned 8 non-finite score(s)"),
    ],
)
def test_every_bad_reward_is_a_reward_error_naming_the_source(
    tiny_sft_model, tmp_path, function, needle
):
    """The same check as above for each failure, in process (one subprocess covers the exit)."""
    trainer = make_trainer(make_config(tiny_sft_model), tmp_path, reward=checked(function, "fn"))
    with pytest.raises(RewardError, match=f"^reward fn {re.escape(needle)}"):
        trainer.step()


# --- paths of the wrong kind, numbers out of range, ignored options: rlhf.chat ----------------


@pytest.fixture(scope="module")
def chat_models(tmp_path_factory, offline_environment):
    """(language model folder, reward model folder): tiny, random, saved as stages save them."""
    from rlhf.config import ModelConfig
    from rlhf.models.loading import load_model_and_tokenizer

    root = tmp_path_factory.mktemp("chat_models")
    folders = []
    for kind in ("causal", "reward"):
        model, tokenizer = load_model_and_tokenizer(
            ModelConfig(), offline_environment, kind=kind, new_head=kind == "reward"
        )
        model.save_pretrained(root / kind)
        tokenizer.save_pretrained(root / kind)
        folders.append(root / kind)
    return folders


def chat_files(tmp_path):
    (tmp_path / "notes.txt").write_text("a file")
    (tmp_path / "folder").mkdir()
    (tmp_path / "q.txt").write_text("吃了没？\n", encoding="utf-8")
    (tmp_path / "gbk.txt").write_bytes("吃了没？\n几点了？\n".encode("gbk"))
    (tmp_path / "late_gbk.txt").write_bytes("吃了没？\n".encode() + "几点了？\n".encode("gbk"))
    return tmp_path


@pytest.mark.parametrize(
    "model,args,needle",
    [
        ("lm", ["--prompt", "hi", "--max-new-tokens", "-1"], "--max-new-tokens: must be >= 1, got -1"),
        ("lm", ["--prompt", "hi", "--max-new-tokens", "0"], "--max-new-tokens: must be >= 1, got 0"),
        ("{tmp}/notes.txt/model", ["--prompt", "hi"], "notes.txt is a file, not a folder"),
        ("lm", ["--questions", "{tmp}/gbk.txt", "--out", "{tmp}/o.jsonl"],
         "gbk.txt is not UTF-8 text (byte 0xb3 on line 1)"),
        ("lm", ["--questions", "{tmp}/late_gbk.txt", "--out", "{tmp}/o.jsonl"],
         "late_gbk.txt is not UTF-8 text (byte 0xbc on line 2)"),
        ("lm", ["--questions", "{tmp}/folder", "--out", "{tmp}/o.jsonl"],
         "--questions: {tmp}/folder is a folder, not a file"),
        ("lm", ["--questions", "{tmp}/notes.txt/q.txt", "--out", "{tmp}/o.jsonl"],
         "{tmp}/notes.txt is a file, not a folder"),
        ("lm", ["--questions", "{tmp}/q.txt", "--out", "{tmp}/folder"],
         "--out: {tmp}/folder is a folder; name a file to write"),
        ("lm", ["--questions", "{tmp}/q.txt", "--out", "{tmp}/notes.txt/o.jsonl"],
         "--out: {tmp}/notes.txt is a file, not a folder"),
        ("lm", ["--prompt", "hi", "--out", "{tmp}/o.jsonl"], "--out: used only with --questions"),
        ("lm", ["--prompt", "hi", "--batch-size", "4"], "--batch-size: used only with --questions"),
        ("lm", ["--answer", "no"], "--answer: goes with --prompt"),
        ("lm", ["--prompt", "hi", "--answer", "no"], "is a language model, which writes the answers"),
        ("lm", ["--questions", "{tmp}/q.txt", "--out", "{tmp}/o.jsonl", "--column", "q"],
         "--column: a plain text file has one question a line"),
        ("rm", ["--prompt", "hi", "--answer", "no", "--sample"],
         "--sample: {rm} is a reward model, which scores answers"),
        ("rm", ["--prompt", "hi", "--answer", "no", "--max-new-tokens", "8"],
         "--max-new-tokens: {rm} is a reward model"),
    ],
    ids=["negative-tokens", "zero-tokens", "model-inside-a-file", "gbk-questions",
         "gbk-on-line-2", "questions-folder", "questions-inside-a-file", "out-folder",
         "out-inside-a-file", "out-without-questions", "batch-size-without-questions",
         "answer-without-prompt", "answer-to-a-language-model", "column-of-a-text-file",
         "sample-with-a-reward-model", "tokens-with-a-reward-model"],
)  # fmt: skip
def test_chat_refuses_bad_arguments_with_one_line(
    chat_models, tmp_path, capsys, model, args, needle
):
    from rlhf.chat import main as chat_main

    files = chat_files(tmp_path)
    names = {"lm": str(chat_models[0]), "rm": str(chat_models[1])}
    fill = {"tmp": str(files), "rm": names["rm"]}
    model = names.get(model, model.format(**fill))
    assert chat_main([model, *(arg.format(**fill) for arg in args)]) == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert line.startswith("error: ") and needle.format(**fill) in line, line
    assert not (files / "o.jsonl").exists()


# --- paths of the wrong kind: the Python API (rlhf.session) -----------------------------------

SESSION = [
    "experiment=keyword_ppo", "scale=quick", "logger=none", "ppo.batch_size=8", "ppo.micro_batch_size=4",
    "ppo.max_new_tokens=4", "ppo.eval_every=0",
]  # fmt: skip


def test_a_session_run_folder_inside_a_file_is_refused_before_anything_is_built(tmp_path):
    from rlhf.session import compose

    (tmp_path / "notes.txt").write_text("a file")
    with pytest.raises(ConfigError, match=r"^output_dir: .*notes.txt is a file, not a folder"):
        compose(SESSION, output_dir=tmp_path / "notes.txt" / "run")
    with pytest.raises(ConfigError, match=r"^output_dir: .*notes.txt is a file, not a folder$"):
        compose(SESSION, output_dir=tmp_path / "notes.txt")


@pytest.fixture(scope="module")
def session(tmp_path_factory, offline_environment):
    from rlhf.session import PPOSession, compose

    with PPOSession(compose(SESSION, output_dir=tmp_path_factory.mktemp("session"))) as opened:
        yield opened


def test_session_save_and_load_name_a_path_of_the_wrong_kind(session, tmp_path):
    (tmp_path / "notes.txt").write_text("a file")
    with pytest.raises(ConfigError, match=r"^save: .*notes.txt is a file, not a folder$"):
        session.save(tmp_path / "notes.txt")
    with pytest.raises(ConfigError, match=r"^save: .*notes.txt is a file, not a folder \("):
        session.save(tmp_path / "notes.txt" / "saved")
    with pytest.raises(ConfigError, match=r"^load: .*notes.txt is a file, not a folder written"):
        session.load(tmp_path / "notes.txt")
    saved = session.save(tmp_path / "saved")
    (saved / "checkpoint" / "state.pt").write_bytes(b"\x00" * 100)  # a copy that stopped
    with pytest.raises(ConfigError, match=r"^load: .* not a whole checkpoint: state.pt is damaged"):
        session.load(saved)


# --- checkpoint folders: stray entries, damaged state files ------------------------------------


def test_resume_names_the_stray_entries_it_skipped(warm_train, tmp_path):
    """Names that look like checkpoints but are not one (a file, a half-written temporary
    folder, another name) are skipped; when nothing is resumable the line says what was found."""
    stopped = tmp_path / "stopped"
    checkpoints = stopped / "ppo" / "checkpoints"
    (checkpoints / ".tmp-update-000004").mkdir(parents=True)
    (checkpoints / "update-latest").mkdir()
    (checkpoints / "update-000006").write_text("not a folder")
    (checkpoints / "start").mkdir()  # the starting policy (hand_on=best): the layout's own
    result = warm_train(["stage=ppo", f"resume={stopped}"], tmp_path / "run")
    assert result.returncode == 2
    (line,) = error_lines(result)
    assert line.startswith(f"error: resume: no checkpoint in {checkpoints}; skipped: "), line
    for entry in (".tmp-update-000004 (a checkpoint whose writing was interrupted)",
                  "update-latest (not a checkpoint name)",
                  "update-000006 (a file, not a checkpoint folder)"):  # fmt: skip
        assert f"{checkpoints}/{entry}" in line, line
    assert f"{checkpoints}/start" not in line


@pytest.mark.parametrize(
    "damage,problem",
    [
        (lambda c: (c / "state.pt").write_bytes((c / "state.pt").read_bytes()[:40]),
         "state.pt is damaged (40 bytes, not a whole torch.save file)"),
        (lambda c: (c / "trainer_state.json").write_text('{"update": "two"}'),
         "trainer_state.json has update='two', not a count of updates"),
        (lambda c: (c / "trainer_state.json").write_text('{"data_order": []}'),
         "trainer_state.json has update=None"),
    ],
    ids=["truncated-state-pt", "update-not-a-number", "update-missing"],
)  # fmt: skip
def test_a_checkpoint_whose_state_file_is_damaged_is_not_resumed(tmp_path, damage, problem):
    from rlhf.runs.resume import PPO_CHECKPOINTS, check_resumable

    stage = tmp_path / "ppo"
    checkpoint = whole_ppo_checkpoint(stage / "checkpoints" / "update-000002")
    assert PPO_CHECKPOINTS.resume_point(stage).checkpoint == checkpoint
    damage(checkpoint)
    assert PPO_CHECKPOINTS.resume_point(stage) is None
    with pytest.raises(
        ConfigError, match=f"^resume: no whole checkpoint in {tmp_path}: "
    ) as caught:
        check_resumable([("ppo", PPO_CHECKPOINTS)], False, tmp_path)
    assert f"{checkpoint}: {problem}" in str(caught.value)


# --- folders the run writes; packages a setting needs ------------------------------------------


def test_a_folder_that_takes_no_new_files_is_refused_before_the_run(
    compose_config, tmp_path, monkeypatch
):
    """(Tests run as root, which may write anywhere: the permission is faked.)"""
    import os

    from rlhf import app

    config = typed_config(compose_config([f"cache_dir={tmp_path}/cache/models"]))
    app.check_folders(config)
    monkeypatch.setattr(os, "access", lambda path, mode: str(path) != str(tmp_path))
    with pytest.raises(ConfigError, match=f"^cache_dir: {tmp_path} is not writable"):
        app.check_folders(config)


def test_the_tensorboard_logger_without_its_package_is_one_line(compose_config, monkeypatch):
    import importlib.util

    from rlhf import app

    config = typed_config(compose_config(["logger=tensorboard"]))
    app.check_optional_packages(config)  # installed here (the Makefile installs the extra)
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name)
    )
    with pytest.raises(ConfigError, match=r"^logger.backend: tensorboard needs the tensorboard"):
        app.check_optional_packages(config)


# --- settings whose combination leaves nothing to work on -------------------------------------


def test_a_test_split_that_takes_every_row_is_one_line(compose_config, tmp_path):
    from rlhf.data.loading import load_preference_data
    from rlhf.errors import DataError

    train = rows_file(tmp_path, GOOD_ROWS)  # 4 rows
    config = typed_config(
        compose_config([f"data.train_file={train}", "data.test_file=null", "data.test_size=0.8"])
    )
    with pytest.raises(DataError, match=r"^data.test_size: 0.8 of 4 rows is 4 test rows"):
        load_preference_data(config.data)


def test_truncation_that_leaves_no_room_for_a_question_is_one_line(compose_config, chat_models):
    from rlhf.config import ModelConfig
    from rlhf.data.loading import limit_lengths, load_preference_data
    from rlhf.errors import DataError
    from rlhf.models.loading import load_tokenizer

    config = typed_config(compose_config(["data.overlong=truncate", "data.max_prompt_length=4"]))
    tokenizer = load_tokenizer(chat_models[0], ModelConfig(name_or_path=str(chat_models[0])))
    data = load_preference_data(config.data)
    with pytest.raises(DataError, match=r"^data.max_prompt_length: 4 tokens leave no room"):
        limit_lengths(data.train, tokenizer, config.data, "train")


# --- sweeps in which no trial completes ---------------------------------------------------------


def test_an_optuna_sweep_whose_trials_all_fail_is_reported_without_a_traceback(
    warm_train, tmp_path
):
    sweep = tmp_path / "sweep"
    args = [
        "-m", "sweep=kl_clip_optuna", "hydra.sweeper.n_trials=2", *PPO_TINY[:-1],
        "reward=keywords", "reward.function._target_=no.such.reward",
        "objective=ppo/objective/scores", f"hydra.sweep.dir={sweep}",
    ]  # fmt: skip
    result = warm_train(args, tmp_path / "run")
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert error.startswith("error: sweep: no trial completed, so there is no best trial")
    failed = [line for line in result.stderr.splitlines() if line.startswith("failed: job #")]
    assert len(failed) == 2 and all("cannot import 'no.such.reward'" in f for f in failed)
    assert f"sweep: 0 of 2 jobs complete in {sweep}" in result.stderr


# --- options ignored in the mode they were given in: train.py ----------------------------------


def test_sweep_settings_in_a_single_run_are_warned_about(warm_train, tmp_path):
    """Hydra ignores a sweep's settings without -m; a run that cannot start shows the warning
    before its own error (a sweep's own SLURM jobs get the sweep's overrides: no warning)."""
    from rlhf import app
    from rlhf.sweeps.cluster import RESULT_FILE_ENV

    args = ["sweep=kl_clip_grid", "hydra.sweeper.params.ppo.seed=0,1"]
    assert app.ignored_sweep_settings([*args, "-m"], {}) is None
    assert app.ignored_sweep_settings(args, {RESULT_FILE_ENV: "x"}) is None
    assert app.ignored_sweep_settings(["launcher=null", "ppo.seed=1"], {}) is None
    result = warm_train(["stage=sft", "sweep=kl_clip_grid", "ppo.klcoef=1"], tmp_path / "run")
    assert result.returncode == 2
    warning, error = [line for line in result.stderr.splitlines() if line.strip()]
    assert warning == (
        "warning: sweep=kl_clip_grid: sweep settings take effect only in a sweep; add -m "
        "(--multirun) to run it, this single run ignores them"
    )
    assert error.startswith("error: unknown config key 'ppo.klcoef'")
