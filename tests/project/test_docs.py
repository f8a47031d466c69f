"""The docs stay true to the tree: every module is named in docs/ARCHITECTURE.md, every relative
link in the README and docs/ resolves (file and anchor), and every experiment and config group
option is listed. Reads files only: no model, no torch."""

from __future__ import annotations

import re
from pathlib import Path

from rlhf.paths import PROJECT_ROOT

DOCS = PROJECT_ROOT / "docs"
CONF = PROJECT_ROOT / "conf"
ARCHITECTURE = DOCS / "ARCHITECTURE.md"
CONFIGURATION = DOCS / "configuration.md"
PACKAGES = ("rlhf", "hydra_plugins")

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")  # [text](target)
FENCE = re.compile(r"^```.*?^```", flags=re.M | re.S)


def pages() -> list[Path]:
    return [PROJECT_ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def module_names() -> list[str]:
    """Every module as the docs name it: its path under rlhf/ (`ppo/logprobs.py`), or from the
    project root outside the package (`hydra_plugins/rlhf_accelerate_launcher/launcher.py`)."""
    names = []
    for package in PACKAGES:
        for path in sorted((PROJECT_ROOT / package).rglob("*.py")):
            base = PROJECT_ROOT / "rlhf" if package == "rlhf" else PROJECT_ROOT
            names.append(path.relative_to(base).as_posix())
    return names


def section(text: str, heading: str) -> str:
    """The text under a `## heading`, up to the next `## `."""
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else len(text)]


def named_paths(text: str) -> set[str]:
    return set(re.findall(r"`([\w./]+\.py)`", text))


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found, seen = set(), {}
    for heading in re.findall(r"^#+ (.+)$", FENCE.sub("", read(path)), flags=re.M):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def relative_links(path: Path) -> list[str]:
    targets = LINK.findall(FENCE.sub("", read(path)))
    return [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t)]  # no http:, mailto:


def config_groups() -> dict[str, list[str]]:
    """Every folder under conf/ that holds options, and its options (file stems)."""
    groups = {}
    for folder in sorted(p for p in CONF.rglob("*") if p.is_dir()):
        options = sorted(p.stem for p in folder.glob("*.yaml"))
        if options:
            groups[folder.relative_to(CONF).as_posix()] = options
    return groups


def group_rows() -> dict[str, str]:
    """configuration.md's group table: group → the rest of its row."""
    rows = {}
    for line in read(CONFIGURATION).splitlines():
        match = re.match(r"^\| `([\w/]+)` \|(.*)$", line)
        if match:
            rows[match.group(1)] = match.group(2)
    return rows


def test_every_module_is_named_in_the_architecture_map():
    named = named_paths(read(ARCHITECTURE))
    assert [name for name in module_names() if name not in named] == []


def test_the_module_index_names_only_modules_that_exist():
    table = section(read(ARCHITECTURE), "Module index")
    index = re.findall(r"^\| `([\w./]+\.py)` \|", table, flags=re.M)
    assert len(index) == len(set(index))
    assert sorted(set(index) ^ set(module_names())) == []


def test_every_relative_link_resolves():
    broken = []
    for page in pages():
        for target in relative_links(page):
            file_part, _, anchor = target.partition("#")
            linked = (page.parent / file_part).resolve() if file_part else page
            if not linked.exists():
                broken.append(f"{page.relative_to(PROJECT_ROOT)}: {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                broken.append(f"{page.relative_to(PROJECT_ROOT)}: {target} (no such heading)")
    assert broken == []


def test_every_config_group_and_option_is_listed():
    rows = group_rows()
    missing = []
    for group, options in config_groups().items():
        if group not in rows:
            missing.append(f"group {group}")
            continue
        missing += [f"{group}={o}" for o in options if f"`{o}`" not in rows[group]]
    assert missing == []


def test_every_experiment_is_listed_in_the_readme_or_docs():
    text = "\n".join(read(page) for page in pages())
    experiments = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
    assert experiments and [e for e in experiments if f"`{e}`" not in text] == []


def test_the_readme_is_short_and_states_the_two_commands():
    readme = read(PROJECT_ROOT / "README.md")
    assert len(readme.encode("utf-8")) <= 12 * 1024
    assert "make run" in readme and "make test" in readme


def test_the_slug_follows_githubs_rule():
    assert slug("Which one `make run` runs") == "which-one-make-run-runs"
    assert slug("ZeRO-1 for PPO without DeepSpeed: `ppo.shard_optimizer=true`") == (
        "zero-1-for-ppo-without-deepspeed-pposhard_optimizertrue"
    )
    assert slug('"Reward hacking suspected"') == "reward-hacking-suspected"
