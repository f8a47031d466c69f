"""Stage `dpo`: direct preference optimisation (Rafailov et al. 2023) with TRL's DPOTrainer.

In a pipeline it starts from the SFT model (its declaration's `starts_from`) and trains on the
same preference rows as the reward model (prompt, chosen, rejected as conversations), full
weights or LoRA (`model.lora.enabled`). The reference is the model it starts from: a frozen copy
loaded here with full weights, the policy with its adapters disabled with LoRA (TRL's own, no
second copy). Knobs: `dpo.beta`, `dpo.loss_type` (TRL's names), `dpo.label_smoothing`, and the
shared TRL settings of `TrainerStageConfig`.

Logged by TRL (rewards = β·(log π − log π_ref) of an answer, summed over its tokens):
`dpo/train/loss`, `dpo/train/rewards/{chosen,rejected,margins,accuracies}`,
`dpo/train/logps/{chosen,rejected}`; final `dpo/test/*` on the test split. Saved: the merged
policy in `<run>/dpo/model/`, which the stage table declares as the run's policy, so eval
compares it with the SFT model as it does PPO's. The phases are the TRL stage skeleton's
(rlhf/stages/trl_stage.py); resume goes through TRL's checkpoints (`dpo.save_steps`).
"""

from __future__ import annotations

from datasets import Dataset
from transformers import PreTrainedTokenizerBase, Trainer
from trl import DPOConfig, DPOTrainer

from rlhf.config import Config
from rlhf.data.chat_format import preference_rows
from rlhf.models.loading import load_model_and_tokenizer
from rlhf.runs.folders import RunPaths
from rlhf.stages.context import StageContext
from rlhf.stages.trl_stage import Evaluation, TrlStage, run_trl_stage

TEST_METRICS = (
    "loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
)  # fmt: skip


class DpoStage(TrlStage):
    name = "dpo"
    config_class = DPOConfig
    trainer_class = DPOTrainer

    def extra_arguments(self, config: Config) -> dict:
        dpo = config.dpo
        return {
            "beta": dpo.beta,
            "loss_type": [dpo.loss_type],
            "label_smoothing": dpo.label_smoothing,
        }

    def trainer_keywords(self, config: Config) -> dict:
        """The reference: the starting model, loaded once more and frozen by TRL; with LoRA none
        (TRL disables the adapters for the reference pass)."""
        if config.model.lora.enabled:
            return {}
        return {"ref_model": load_model_and_tokenizer(config.model, config.cache_dir)[0]}

    def datasets(self, config: Config, train: Dataset, test: Dataset) -> dict[str, Dataset]:
        system_prompt = config.data.system_prompt
        return {
            "train_dataset": preference_rows(train, system_prompt),
            "eval_dataset": preference_rows(test, system_prompt),
        }

    def evaluate(
        self, ctx: StageContext, trainer: Trainer, tokenizer: PreTrainedTokenizerBase, test: Dataset
    ) -> Evaluation:
        evaluation = trainer.evaluate()
        metrics = {f"dpo/test/{name}": evaluation[f"eval_{name}"] for name in TEST_METRICS}
        metrics["dpo/test_rows"] = len(test)
        return Evaluation(metrics, trainer.model)


def run(config: Config, paths: RunPaths) -> dict[str, float]:
    return run_trl_stage(DpoStage(), config, paths)
