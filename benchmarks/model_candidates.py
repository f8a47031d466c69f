"""Candidate models for the insult_ppo job, measured the same way (issue 16, section 1).

    .venv/bin/python benchmarks/model_candidates.py tokens --model gemma3_270m
    .venv/bin/python benchmarks/model_candidates.py continue --model gemma3_270m
    .venv/bin/python benchmarks/model_candidates.py step --model gemma3_270m --top-layers 9
    .venv/bin/python benchmarks/model_candidates.py pair --model gemma3_270m --top-layers 9 \
        --vs smollm2_135m --vs-top-layers 15
    .venv/bin/python benchmarks/model_candidates.py answers --model-dir outputs/x/sft/model

`--model` names a conf/model/*.yaml file; `--model-dir` a saved model folder (an SFT output, a
converted GGUF folder). Each command prints one JSON line; run one command per process, so that
peak RSS (`ru_maxrss`, the process's lifetime peak, loading included) is that command's own.

- tokens: tokens per question, per answer (chosen / rejected) and per chat-formatted prompt over
  the train and test files.
- continue: greedy continuations (30 new tokens) of raw Chinese text and of chat-formatted
  questions: what the model writes before any SFT.
- step: one LoRA training step as the job takes it (r 16 on every linear layer of the top
  `--top-layers` layers; batch 8 of real rows rendered by the chat template, answer-only LM
  loss), and one step of a full-parameter critic (the base model + a score head, AdamW), and a
  batched generation of 40 tokens: median seconds over `--repeats` after one warm-up.
- pair: the LoRA step and the generation of `--model` and `--vs` taken in turn, with the median
  of the per-pair ratios (the figure to quote on a shared machine).
- answers: greedy answers (40 new tokens, stop at EOS) to the first `--n` test questions, with
  whether each ended at EOS.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlhf.config import ModelConfig  # noqa: E402
from rlhf.data.chat_format import prompt_messages  # noqa: E402
from rlhf.models.loading import (  # noqa: E402
    load_model,
    load_model_and_tokenizer,
    load_tokenizer,
    lora_config,
    resolve_model_dir,
)
from rlhf.paths import PROJECT_ROOT  # noqa: E402
from rlhf.runtime.generation import SamplingSettings, sample_answers  # noqa: E402

DATA = PROJECT_ROOT / "experiments" / "insult_ppo" / "data"
CACHE = Path("~/.cache/rlhf").expanduser()
RAW_PROMPTS = ["今天天气很好，我们", "长沙夏天热不热？", "你这个问题问得", "中国的首都是"]
CHAT_QUESTIONS = ["长沙夏天热不热？", "怎么入门C语言？", "你喜欢什么颜色？"]
LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def rows(name: str) -> list[dict[str, str]]:
    lines = (DATA / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def model_settings(args: argparse.Namespace) -> ModelConfig:
    if args.model_dir:
        return ModelConfig(name_or_path=str(Path(args.model_dir).resolve()))
    schema = OmegaConf.structured(ModelConfig)
    loaded = OmegaConf.load(PROJECT_ROOT / "conf" / "model" / f"{args.model}.yaml")
    return OmegaConf.to_object(OmegaConf.merge(schema, loaded))


def peak_rss_mb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def stats(values: list[int]) -> dict[str, float]:
    return {
        "mean": round(statistics.mean(values), 1),
        "median": statistics.median(values),
        "max": max(values),
    }


def chat_prompt(tokenizer, question: str) -> str:
    return tokenizer.apply_chat_template(
        prompt_messages(question, None), tokenize=False, add_generation_prompt=True
    )


def count(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def cmd_tokens(args: argparse.Namespace) -> dict:
    settings = model_settings(args)
    tokenizer = load_tokenizer(resolve_model_dir(settings, CACHE), settings)
    data = rows("train") + rows("test")
    return {
        "rows": len(data),
        "vocabulary": len(tokenizer),
        "question": stats([count(tokenizer, r["question"]) for r in data]),
        "chosen": stats([count(tokenizer, r["chosen"]) for r in data]),
        "rejected": stats([count(tokenizer, r["rejected"]) for r in data]),
        "chat_prompt": stats(
            [count(tokenizer, chat_prompt(tokenizer, r["question"])) for r in data]
        ),
        "chars_per_question": round(statistics.mean(len(r["question"]) for r in data), 1),
    }


def greedy(model, tokenizer, text: str, new_tokens: int) -> str:
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**ids, max_new_tokens=new_tokens, do_sample=False)
    return tokenizer.decode(output[0, ids["input_ids"].shape[1] :], skip_special_tokens=False)


def cmd_continue(args: argparse.Namespace) -> dict:
    model, tokenizer = load_model_and_tokenizer(model_settings(args), CACHE)
    bos = tokenizer.bos_token or ""
    raw = {p: greedy(model, tokenizer, bos + p, 30) for p in RAW_PROMPTS}
    chat = {q: greedy(model, tokenizer, chat_prompt(tokenizer, q), 30) for q in CHAT_QUESTIONS}
    return {"raw": raw, "chat": chat}


def training_batch(tokenizer, size: int) -> tuple[dict[str, torch.Tensor], int]:
    """Right-padded prompt + chosen rows; labels only on the answer. (batch, answer width)"""
    ids, labels = [], []
    for row in rows("train")[:size]:
        prompt = tokenizer(chat_prompt(tokenizer, row["question"]), add_special_tokens=False)
        answer = tokenizer(row["chosen"] + tokenizer.eos_token, add_special_tokens=False)
        ids.append(prompt["input_ids"] + answer["input_ids"])
        labels.append([-100] * len(prompt["input_ids"]) + answer["input_ids"])
    width = max(map(len, ids))
    batch = {
        "input_ids": torch.tensor([r + [tokenizer.pad_token_id] * (width - len(r)) for r in ids]),
        "attention_mask": torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in ids]),
        "labels": torch.tensor([r + [-100] * (width - len(r)) for r in labels]),
    }
    return batch, width


def timed(step, repeats: int) -> float:
    step()  # warm-up: allocations, optimiser state
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
        print(f"{step.__name__}: {times[-1]:.2f} s", file=sys.stderr, flush=True)
    return round(statistics.median(times), 3)


def lora_and_generate(model, tokenizer, batch, args: argparse.Namespace, lora) -> dict:
    from peft import get_peft_model

    policy = get_peft_model(model, lora_config(lora, model.config.num_hidden_layers))
    optimiser = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-4)

    def lora_step() -> None:
        policy(**batch).loss.backward()
        optimiser.step()
        optimiser.zero_grad(set_to_none=True)

    lora_seconds = timed(lora_step, args.repeats)
    rss_lora = peak_rss_mb()
    prompts = [r["question"] for r in rows("train")[: args.batch]]
    sampling = SamplingSettings(max_new_tokens=40, min_new_tokens=40, do_sample=True)
    generate_seconds = timed(
        lambda: sample_answers(policy, tokenizer, prompts, None, sampling), args.repeats
    )
    return {
        "lora_step_s": lora_seconds,
        "rss_after_lora_mb": rss_lora,
        "generate_40_s": generate_seconds,
    }


def critic_step_seconds(critic, batch, repeats: int) -> float:
    optimiser = torch.optim.AdamW(critic.parameters(), lr=1e-5)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}

    def critic_step() -> None:
        hidden = critic.base_model(**inputs).last_hidden_state
        critic.score(hidden).float().pow(2).mean().backward()
        optimiser.step()
        optimiser.zero_grad(set_to_none=True)

    return timed(critic_step, repeats)


def cmd_step(args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    settings = model_settings(args)
    model_dir = resolve_model_dir(settings, CACHE)
    tokenizer = load_tokenizer(model_dir, settings)
    model = load_model(model_dir, settings, tokenizer)
    result = {"rss_after_load_mb": peak_rss_mb()}
    batch, width = training_batch(tokenizer, args.batch)
    lora = dataclasses.replace(
        settings.lora, enabled=True, r=16, target_modules=LINEAR, top_layers=args.top_layers
    )
    result.update(lora_and_generate(model, tokenizer, batch, args, lora))
    layers = model.config.num_hidden_layers
    del model
    critic = load_model(model_dir, settings, tokenizer, kind="reward")
    result["critic_full_step_s"] = critic_step_seconds(critic, batch, args.repeats)
    return {
        "batch": list(batch["input_ids"].shape),
        "answer_tokens": int((batch["labels"] != -100).sum()),
        "width": width,
        "layers": layers,
        "top_layers": args.top_layers,
        "parameters_M": round(sum(p.numel() for p in critic.parameters()) / 1e6, 1),
        **result,
        "peak_rss_mb": peak_rss_mb(),
        "threads": torch.get_num_threads(),
    }


def lora_policy(settings: ModelConfig, top_layers: int | None, batch_size: int):
    """(LoRA policy as the job trains it, its tokenizer, a real batch, its optimiser)."""
    from peft import get_peft_model

    model, tokenizer = load_model_and_tokenizer(settings, CACHE)
    lora = dataclasses.replace(
        settings.lora, enabled=True, r=16, target_modules=LINEAR, top_layers=top_layers
    )
    policy = get_peft_model(model, lora_config(lora, model.config.num_hidden_layers))
    optimiser = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-4)
    return policy, tokenizer, training_batch(tokenizer, batch_size)[0], optimiser


def cmd_pair(args: argparse.Namespace) -> dict:
    """LoRA steps and generations of two models taken in turn (A B A B ...), so that a shared,
    busy machine slows both alike: per-model medians and the median of the per-pair ratios."""
    torch.manual_seed(0)
    vs = argparse.Namespace(model=args.vs, model_dir=None)
    sides = {
        "a": lora_policy(model_settings(args), args.top_layers, args.batch),
        "b": lora_policy(model_settings(vs), args.vs_top_layers, args.batch),
    }
    prompts = [r["question"] for r in rows("train")[: args.batch]]
    sampling = SamplingSettings(max_new_tokens=40, min_new_tokens=40, do_sample=True)

    def lora_step(side: str) -> None:
        policy, _, batch, optimiser = sides[side]
        policy(**batch).loss.backward()
        optimiser.step()
        optimiser.zero_grad(set_to_none=True)

    def generate(side: str) -> None:
        policy, tokenizer, _, _ = sides[side]
        sample_answers(policy, tokenizer, prompts, None, sampling)

    result = {"vs": args.vs, "pairs": args.repeats}
    for name, work in (("lora_step", lora_step), ("generate_40", generate)):
        seconds = {"a": [], "b": []}
        for side in ("a", "b"):
            work(side)  # warm-up
        for _ in range(args.repeats):
            for side in ("a", "b"):
                start = time.perf_counter()
                work(side)
                seconds[side].append(time.perf_counter() - start)
        ratios = [a / b for a, b in zip(seconds["a"], seconds["b"], strict=True)]
        result[f"{name}_s"] = round(statistics.median(seconds["a"]), 3)
        result[f"{name}_vs_s"] = round(statistics.median(seconds["b"]), 3)
        result[f"{name}_ratio"] = round(statistics.median(ratios), 3)
    result["batch_shapes"] = [list(sides[s][2]["input_ids"].shape) for s in ("a", "b")]
    return result


def cmd_answers(args: argparse.Namespace) -> dict:
    model, tokenizer = load_model_and_tokenizer(model_settings(args), CACHE)
    model.eval()
    questions = [r["question"] for r in rows("test")[: args.n]]
    settings = SamplingSettings(max_new_tokens=40, do_sample=False)
    answers, ended = [], []
    for start in range(0, len(questions), 8):
        chunk = questions[start : start + 8]
        _, _, mask, done, texts = sample_answers(model, tokenizer, chunk, None, settings)
        answers += texts
        ended += done.tolist()
        del mask
    return {
        "eos_token": tokenizer.eos_token,
        "eos_rate": sum(ended) / len(ended),
        "answers": [
            {"question": q, "answer": a, "ended": e}
            for q, a, e in zip(questions, answers, ended, strict=True)
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["tokens", "continue", "step", "pair", "answers"])
    parser.add_argument("--model", default="gemma3_270m", help="a conf/model/*.yaml name")
    parser.add_argument("--model-dir", default=None, help="a saved model folder instead")
    parser.add_argument("--top-layers", type=int, default=None, help="LoRA on the last N layers")
    parser.add_argument("--vs", default="smollm2_135m", help="pair: the other conf/model name")
    parser.add_argument("--vs-top-layers", type=int, default=None, help="pair: its LoRA layers")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n", type=int, default=20, help="test questions to answer")
    args = parser.parse_args()
    command = {"tokens": cmd_tokens, "continue": cmd_continue, "step": cmd_step}
    command.update(pair=cmd_pair, answers=cmd_answers)
    result = {"command": args.command, "model": args.model_dir or args.model}
    result.update(command[args.command](args))
    print(json.dumps(result, ensure_ascii=False))


if __name__ == "__main__":
    main()
