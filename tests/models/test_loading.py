"""Model loading: the `tiny` alias builds once into the cache (also under concurrency), other names pass through."""

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from lit_codegen.models import tiny
from lit_codegen.models.loading import load_causal_lm, load_tokenizer, resolve_model_path
from lit_codegen.models.tiny import build_tiny_model


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny"), num_hidden_layers=2)


def test_other_names_pass_through_unchanged(tmp_path):
    assert resolve_model_path("Qwen/Qwen2.5-3B-Instruct") == "Qwen/Qwen2.5-3B-Instruct"
    assert resolve_model_path(str(tmp_path)) == str(tmp_path)


def test_tiny_alias_builds_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LIT_CODEGEN_CACHE", str(tmp_path))
    path = Path(resolve_model_path("tiny"))
    assert path.parent == tmp_path and path.name.startswith("tiny-")
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert resolve_model_path("tiny") == str(path)
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp  # reused, not rebuilt
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp dirs left behind


def test_racing_builders_leave_one_complete_directory(tmp_path, monkeypatch):
    """Two builders that both find no cache (the barrier makes them race) end with one valid directory."""
    monkeypatch.setenv("LIT_CODEGEN_CACHE", str(tmp_path))
    barrier = threading.Barrier(2)

    def build_after_barrier(out_dir, **kwargs):
        barrier.wait(timeout=60)
        return build_tiny_model(out_dir, num_hidden_layers=1, hidden_size=32, **kwargs)

    monkeypatch.setattr(tiny, "build_tiny_model", build_after_barrier)
    with ThreadPoolExecutor(2) as pool:
        paths = set(pool.map(lambda _: resolve_model_path("tiny"), range(2)))
    assert len(paths) == 1
    assert len(list(tmp_path.iterdir())) == 1  # the loser's temp dir is gone
    load_causal_lm(paths.pop())  # complete and loadable


def test_load_tokenizer_pads_left(tiny_dir):
    tokenizer = load_tokenizer(str(tiny_dir))
    assert tokenizer.padding_side == "left" and tokenizer.pad_token_id is not None


def test_load_causal_lm_dtype_and_gradient_checkpointing(tiny_dir):
    model = load_causal_lm(str(tiny_dir), dtype="bfloat16", gradient_checkpointing=True)
    assert model.training and model.dtype == torch.bfloat16
    assert model.is_gradient_checkpointing


def test_bad_inputs_get_one_clear_error(tmp_path):
    with pytest.raises(ValueError, match="dtype must be one of"):
        load_causal_lm("tiny-does-not-matter", dtype="fp8")
    with pytest.raises(FileNotFoundError, match="not an HF model directory"):
        load_causal_lm(str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="not an HF model directory"):
        load_tokenizer(str(tmp_path))


def test_a_folder_without_tokenizer_files_is_refused_not_an_empty_tokenizer(tiny_dir, tmp_path):
    load_causal_lm(str(tiny_dir)).save_pretrained(tmp_path / "model_only")  # no tokenizer.save_pretrained
    with pytest.raises(FileNotFoundError, match="has no tokenizer files"):
        load_tokenizer(str(tmp_path / "model_only"))


def test_a_critic_folder_is_not_loaded_as_a_causal_lm(tiny_dir, tmp_path):
    from lit_codegen.models.critic import CriticModel

    CriticModel.from_pretrained(str(tiny_dir)).save_pretrained(tmp_path / "critic")
    with pytest.raises(ValueError, match="is a critic"):  # its lm_head would be random
        load_causal_lm(str(tmp_path / "critic"))


def test_a_home_relative_folder_loads(tiny_dir, tmp_path, monkeypatch):
    import shutil

    monkeypatch.setenv("HOME", str(tmp_path))
    shutil.copytree(tiny_dir, tmp_path / "mymodel")
    assert resolve_model_path("~/mymodel") == str(tmp_path / "mymodel")
    assert load_tokenizer("~/mymodel")("print(1)").input_ids
    assert load_causal_lm("~/mymodel").config.num_hidden_layers == 2


def test_a_missing_folder_that_looks_like_a_hub_id_is_named(monkeypatch):
    from lit_codegen.models import loading

    def offline(*args, **kwargs):  # what transformers raises when the hub cannot be reached (no network here)
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr(loading.AutoTokenizer, "from_pretrained", offline)
    with pytest.raises(FileNotFoundError, match="'out/sft' is neither a local folder nor a model the hub serves"):
        load_tokenizer("out/sft")
