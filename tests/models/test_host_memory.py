"""host_heap=reuse (rlhf/runtime/host_memory.py): a large CPU tensor allocated again after it was
freed writes into pages the process already has instead of page-faulting a fresh mapping, and
`release_free_memory` between steps hands the heap's free pages back, so the heap's
fragmentation does not grow the RSS step after step."""

import json
import subprocess
import sys

import pytest

from rlhf.runtime.host_memory import _glibc, release_free_memory, use_host_heap

TENSOR_BYTES = 64 * 2**20  # above glibc's largest mmap threshold (32 MiB)
PAGES = TENSOR_BYTES // 4096

# Rounds of: allocate and fill a large tensor, a few small ones after it (as a step's bookkeeping
# does), free the large one; then release_free_memory if asked. Prints per round the minor page
# faults and the resident MiB after the round.
ROUNDS_PROGRAM = """
import json, resource, sys
import torch
from rlhf.runtime.host_memory import release_free_memory, use_host_heap
modes, release, small_tensors = sys.argv[1].split(","), sys.argv[3] == "release", int(sys.argv[4])
log = [use_host_heap(mode) for mode in modes][-1]
def resident_mib():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
faults, resident, kept = [], [], []
for _ in range(int(sys.argv[5])):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    tensor = torch.empty(int(sys.argv[2]) // 4, dtype=torch.float32)
    tensor.fill_(1.0)
    kept = [torch.empty(1000) for _ in range(small_tensors)]
    del tensor
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    released = release_free_memory() if release else None
    resident.append(resident_mib())
print(json.dumps({"log": log, "faults": faults, "resident": resident, "released": released}))
"""

needs_glibc = pytest.mark.skipif(_glibc() is None, reason="the C library is not glibc")


def rounds(modes: str, release: bool = False, small_tensors: int = 0, count: int = 8) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", ROUNDS_PROGRAM, modes, str(TENSOR_BYTES),
         "release" if release else "keep", str(small_tensors), str(count)],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


@needs_glibc
@pytest.mark.parametrize("small_tensors", [0, 3])
def test_reuse_writes_a_freed_tensor_again_without_page_faults(small_tensors):
    reuse = rounds("reuse", small_tensors=small_tensors, count=16)
    system = rounds("system", small_tensors=small_tensors, count=16)
    assert "kept for reuse" in reuse["log"], reuse["log"]
    assert "defaults" in system["log"], system["log"]
    # The heap first grows by a copy a round (the aligned request needs a little more than the
    # hole it left, measured here: 3-8 rounds) until glibc consolidates the leftovers; from then
    # on every round writes into pages the heap has: rounds 11-16 fault nothing and hold still
    steady = slice(10, 16)
    assert max(reuse["faults"][steady]) < 0.02 * PAGES, reuse
    assert max(reuse["resident"][steady]) - min(reuse["resident"][steady]) < 1, reuse
    # glibc's defaults unmap the tensor on free: every round faults it in again (one fault a
    # 4 KiB page, or a 2 MiB one where transparent huge pages are always on)
    assert min(system["faults"][steady]) >= 100, system


@needs_glibc
def test_release_between_steps_keeps_a_fragmenting_heap_at_live_memory():
    # small tensors allocated after the large one pin the heap's top: without a release, the
    # aligned allocation may not fit the hole it left and the heap grows by a copy a round
    start_mib = rounds("reuse", small_tensors=0)["resident"][0] - TENSOR_BYTES / 2**20
    released = rounds("reuse", release=True, small_tensors=3)
    assert released["released"] is True, released
    # after each released round only the interpreter, torch and a few KiB of small tensors are
    # resident: within half a tensor of the start, round after round
    assert max(released["resident"]) < start_mib + TENSOR_BYTES / 2**20 / 2, (start_mib, released)


@needs_glibc
def test_system_after_reuse_gives_glibc_its_numbers_back():
    result = rounds("reuse,system", release=True)
    assert "defaults" in result["log"], result["log"]
    assert result["released"] is False  # glibc trims by itself under its defaults
    assert result["faults"][1] >= 100, result  # mmap per large tensor again: unmapped on free


def test_release_does_nothing_unless_reuse_is_on():
    use_host_heap("system")
    assert release_free_memory() is False


def test_an_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="host_heap must be one of"):
        use_host_heap("keep")


def test_the_sft_stage_hands_free_pages_back_after_each_optimiser_step(
    compose_config, tmp_path, monkeypatch
):
    """The TRL stages' HostMemoryCallback: one release per optimiser step, not per micro-step."""
    import rlhf.stages.trl_stage as trl_stage
    from rlhf.app import typed_config
    from rlhf.runs.folders import RunPaths
    from rlhf.stages import sft

    released = []
    monkeypatch.setattr(
        trl_stage, "release_free_memory", lambda: released.append(release_free_memory())
    )
    overrides = ["stage=sft", "model=tiny", "logger=none", "sft.max_steps=3"]
    config = typed_config(compose_config([*overrides, "sft.gradient_accumulation_steps=2"]))
    use_host_heap("reuse")
    try:
        sft.run(config, RunPaths(tmp_path))
    finally:
        use_host_heap("system")  # this worker's later tests get glibc's defaults back
    assert released == [_glibc() is not None] * 3
    assert (tmp_path / "sft" / "model" / "model.safetensors").is_file()
