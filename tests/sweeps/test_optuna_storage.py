"""An Optuna sweep whose study lives in a database (`hydra.sweeper.storage=sqlite:///...`):
the same command run again continues the study: trial numbers go on, the best trial over both
runs is reported, and the continued run draws new parameters instead of the first run's."""

from __future__ import annotations

import optuna
import pytest
import yaml

from rlhf.app import optuna_sampler_seed

SWEEP = [
    "-m", "experiment=keyword_ppo", "scale=quick", "sweep=kl_clip_optuna", "hydra.sweeper.n_trials=2",
    "logger=none", "ppo.batch_size=8", "ppo.micro_batch_size=4", "ppo.max_new_tokens=4",
    "ppo.total_updates=2", "ppo.eval_every=0", "objective=ppo/objective/scores",
]  # fmt: skip
STUDY = "keyword_ppo-kl_clip"  # ${name}-kl_clip


def trials(storage: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=STUDY, storage=storage).trials


def test_the_same_command_again_continues_the_study(warm_train, tmp_path):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    results = []
    for run in ("first", "second"):
        sweep = tmp_path / run
        args = [*SWEEP, f"hydra.sweeper.storage={storage}", f"hydra.sweep.dir={sweep}"]
        result = warm_train(args, tmp_path / "unused")
        assert result.returncode == 0, result.stderr[-3000:]
        results.append(yaml.safe_load((sweep / "optimization_results.yaml").read_text()))
        assert "sweep: 2 of 2 jobs complete" in result.stderr
    found = trials(storage)
    assert [t.number for t in found] == [0, 1, 2, 3]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in found)
    # the second run continued from a sampler seeded past the first run's draws
    first, second = (
        {tuple(sorted(t.params.items())) for t in part} for part in (found[:2], found[2:])
    )
    assert not first & second
    best = max(found, key=lambda t: t.value)
    assert results[1]["best_value"] == pytest.approx(best.value)
    assert results[1]["best_value"] >= results[0]["best_value"]
    assert results[1]["best_params"] == best.params


def test_the_sampler_seed_moves_on_by_the_trials_a_stored_study_holds(tmp_path):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    assert optuna_sampler_seed(42, None, STUDY) == 42  # no storage: the run's seed
    assert optuna_sampler_seed(None, storage, STUDY) is None  # unseeded stays unseeded
    assert optuna_sampler_seed(42, storage, STUDY) == 42  # a new study
    study = optuna.create_study(study_name=STUDY, storage=storage)
    for value in (1.0, 2.0, 3.0):
        study.add_trial(
            optuna.trial.create_trial(
                params={"x": value},
                distributions={"x": optuna.distributions.UniformDistribution(0, 5)},
                value=value,
            )
        )
    optuna.create_study(study_name="another", storage=storage)
    assert optuna_sampler_seed(42, storage, STUDY) == 45
    assert optuna_sampler_seed(42, storage, "another") == 42
