"""Rows as chat conversations: the messages of a prompt (with the optional system message), a
prompt answered, and the conversational rows TRL's trainers apply the chat template to."""

from __future__ import annotations

from datasets import Dataset

Message = dict[str, str]


def prompt_messages(prompt: str, system_prompt: str | None) -> list[Message]:
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return system + [{"role": "user", "content": prompt}]


def conversations(
    prompts: list[str], answers: list[str], system_prompt: str | None
) -> list[list[Message]]:
    """Each prompt's messages followed by its answer as the assistant's turn."""
    return [
        prompt_messages(prompt, system_prompt) + [{"role": "assistant", "content": answer}]
        for prompt, answer in zip(prompts, answers, strict=True)
    ]


def sft_rows(dataset: Dataset, system_prompt: str | None) -> Dataset:
    """Conversational prompt → completion rows for TRL's SFTTrainer (loss on the completion)."""
    return Dataset.from_dict(
        {
            "prompt": [prompt_messages(p, system_prompt) for p in dataset["prompt"]],
            "completion": [[{"role": "assistant", "content": c}] for c in dataset["chosen"]],
        }
    )


def preference_rows(dataset: Dataset, system_prompt: str | None) -> Dataset:
    """Conversational (prompt, chosen, rejected) rows for TRL's RewardTrainer."""
    return Dataset.from_dict(
        {
            "prompt": [prompt_messages(p, system_prompt) for p in dataset["prompt"]],
            "chosen": [[{"role": "assistant", "content": c}] for c in dataset["chosen"]],
            "rejected": [[{"role": "assistant", "content": r}] for r in dataset["rejected"]],
        }
    )
