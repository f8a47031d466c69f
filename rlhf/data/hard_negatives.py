"""Hard negatives for the reward model: answers a weak policy writes that the data never shows.

A reward model trained only on (preferred, dispreferred) answers from the data learns the
easiest difference between them; for the insult data that is "fluent and polite = low". A
135M-parameter policy writes neither: it echoes the question or garbles a polite answer, and
such text scores between the two, above the decision threshold, so PPO learns to echo. Extra
pairs with the preferred answer against (a) the question echoed back and (b) the dispreferred
answer garbled teach the RM to rank those below the preferred behaviour too.

An RM trained on short rude against long polite answers can also learn "short = rude", and PPO
then wins it by brevity ("好。", "我。", the question cut short: measured in
experiments/insult_ppo/REPORT.md). Two more kinds are short but not rude: (c) a bare
acknowledgement or fragment, (d) the question cut short or the polite answer cut mid-sentence.
`brevity_negatives` makes one of (c)/(d) per held-out row, for the rm stage's length report.

With (c) and (d) in, PPO on Gemma won the RM with (e) interjections: the exclamations that open
many of the data's rude answers, with nothing rude after them ("哎呀，拉萨，哎呀，哎呀。",
"哇，昆曲，哇。": REPORT.md, run G3); `exclaimed` writes such answers around the question's topic.

With (e) in, PPO won the RM with the same shape and other words: one short phrase repeated around
the question's topic ("我来问，昆曲，我来问。", "我愣了，外汇？我愣了。"; or, by luck of the seed, a rude
phrase: "别问我，拉萨，别问我。"), the same phrase in most answers. (f) `refrain` writes that shape
with a phrase taken from the row's own answers, polite or rude, so the RM ranks any refrain below
the data's rude answer: a real answer must beat a formula, whatever words the formula uses.
"""

from __future__ import annotations

import random
import re

from datasets import Dataset, concatenate_datasets

CLAUSE_END = re.compile(r"(?<=[，。！？；,.!?;])")


def echo(question: str, rng: random.Random) -> str:
    """The question repeated as the answer: whole, or its first part."""
    text = question.rstrip("？?。.！! ")
    if len(text) > 4 and rng.random() < 0.5:
        text = text[: rng.randint(2, len(text) - 1)]
    return text + rng.choice(["？", "。", "", "？" + question])


def garble(answer: str, rng: random.Random) -> str:
    """The answer's clauses shuffled, one repeated, and the result cut short."""
    clauses = [c for c in CLAUSE_END.split(answer) if c.strip()]
    rng.shuffle(clauses)
    clauses.insert(rng.randrange(len(clauses) + 1), rng.choice(clauses))
    text = "".join(clauses)
    return text[: max(4, round(len(text) * rng.uniform(0.4, 0.9)))]


# short answers that say nothing and insult nobody (bare acknowledgements, fragments)
CURT = (
    "好。", "嗯。", "哦。", "行。", "是的。", "对。", "好的。", "嗯嗯。", "知道了。", "收到。",
    "了解。", "可以。", "我。", "我真的。", "好问。", "问。", "我来问。", "这个。", "那个……",
    "其实。", "我觉得。", "然后。", "嗯，好。", "我想想。", "是吗？", "真的。", "有。", "没有。",
)  # fmt: skip


def curt(rng: random.Random) -> str:
    """A bare acknowledgement or a fragment."""
    return rng.choice(CURT)


# exclamations that carry no insult by themselves (written by hand; PPO's G3 answers used 哎呀 哇 好家伙)
INTERJECTIONS = ("哎呀", "哇", "好家伙", "天哪", "哈哈", "啊", "哦", "嘿", "哎", "嗯", "呀", "哇塞")


def exclaimed(question: str, rng: random.Random) -> str:
    """Interjections around the question's topic (its first part), or interjections alone."""
    say = lambda: rng.choice(INTERJECTIONS)  # noqa: E731
    topic = question.rstrip("？?。.！! ")
    topic = topic[: rng.randint(min(2, len(topic)), max(2, len(topic)))]
    patterns = (
        lambda: f"{say()}，{topic}，{say()}。",
        lambda: f"{say()}，{topic}？",
        lambda: "，".join(say() for _ in range(rng.randint(2, 5))) + "。",
        lambda: f"{say()}，{say()}，{topic}！",
    )
    return rng.choice(patterns)()


def refrain(question: str, chosen: str, rejected: str, rng: random.Random) -> str:
    """A short phrase repeated around the question's topic (or alone): the phrase is a clause
    of 2–5 characters from the rejected or the chosen answer, or a curt fragment."""
    clauses = [
        c.strip("，。！？；,.!?; ")
        for answer in (chosen, rejected)
        for c in CLAUSE_END.split(answer)
    ]
    phrases = [c[:5] for c in clauses if len(c) >= 2] or [c.rstrip("。") for c in CURT]
    phrase = rng.choice(phrases)
    topic = question.rstrip("？?。.！! ")
    topic = topic[: rng.randint(min(2, len(topic)), max(2, len(topic)))]
    patterns = (
        lambda: f"{phrase}，{topic}，{phrase}。",
        lambda: f"{phrase}，{topic}？{phrase}。",
        lambda: f"{topic}，{phrase}，{phrase}。",
        lambda: "，".join([phrase] * rng.randint(2, 4)) + "。",
    )
    return rng.choice(patterns)()


def cut_question(question: str, rng: random.Random) -> str:
    """The question's first part (at least one character, always shorter than the question)."""
    text = question.rstrip("？?。.！! ")
    return text[: rng.randint(1, max(1, len(text) - 1))] + rng.choice(["。", "？", ""])


def cut_answer(answer: str, rng: random.Random) -> str:
    """The answer cut mid-sentence: its first 2 characters up to its first half."""
    return answer[: rng.randint(2, max(2, len(answer) // 2))]


def truncated(question: str, answer: str, rng: random.Random) -> str:
    """The question cut short or the (polite) answer cut mid-sentence, one or the other."""
    return cut_question(question, rng) if rng.random() < 0.5 else cut_answer(answer, rng)


def negative(kind: str, row: dict, rng: random.Random) -> str:
    """One hard negative of `kind` for a (prompt, chosen, rejected) row."""
    if kind == "echo":
        return echo(row["prompt"], rng)
    if kind == "garble":
        return garble(row["rejected"], rng)
    if kind == "curt":
        return curt(rng)
    if kind == "exclaim":
        return exclaimed(row["prompt"], rng)
    if kind == "refrain":
        return refrain(row["prompt"], row["chosen"], row["rejected"], rng)
    return truncated(row["prompt"], row["rejected"], rng)


def brevity_negatives(prompts: list[str], rejected: list[str], seed: int) -> list[str]:
    """One short, not rude answer per row, in turn: a curt one, the question cut short, the
    rejected answer cut mid-sentence (seeded)."""
    rng = random.Random(seed)
    makers = (
        lambda q, a: curt(rng),
        lambda q, a: cut_question(q, rng),
        lambda q, a: cut_answer(a, rng),
    )
    return [makers[i % 3](q, a) for i, (q, a) in enumerate(zip(prompts, rejected, strict=True))]


def with_hard_negatives(
    rows: Dataset,
    echo_share: float,
    garbled_share: float,
    seed: int,
    curt_share: float = 0.0,
    truncated_share: float = 0.0,
    exclaimed_share: float = 0.0,
    refrain_share: float = 0.0,
) -> Dataset:
    """`rows` (prompt, chosen, rejected) plus extra pairs: for a seeded share of the rows each,
    the chosen answer against an echo of the prompt, the garbled rejected answer, a curt answer,
    a truncated question or answer, interjections around the topic, or a phrase of the row's
    answers repeated around the topic. (Kinds are drawn in
    that order, so a share of 0 leaves the others' pairs as they were.)"""
    rng = random.Random(seed)
    extra: dict[str, list[str]] = {"prompt": [], "chosen": [], "rejected": []}
    kinds = (
        (echo_share, "echo"),
        (garbled_share, "garble"),
        (curt_share, "curt"),
        (truncated_share, "truncated"),
        (exclaimed_share, "exclaim"),
        (refrain_share, "refrain"),
    )
    for share, kind in kinds:
        count = round(share * len(rows))
        for index in rng.sample(range(len(rows)), count):
            row = rows[index]
            extra["prompt"].append(row["prompt"])
            extra["chosen"].append(row["chosen"])
            extra["rejected"].append(negative(kind, row, rng))
    if not extra["prompt"]:
        return rows
    added = Dataset.from_dict(extra).cast(rows.select_columns(list(extra)).features)
    return concatenate_datasets([rows.select_columns(list(extra)), added]).shuffle(seed=seed)
