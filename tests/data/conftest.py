"""Fixtures of the data tests: a small local tokenizer with a chat template (no hub) and the shared data folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from lit_codegen.data.toy import read_toy_records

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _shared_data_dir() -> Path | None:
    """`shared/data` beside the repository (CI layout) or inside it."""
    repo = Path(__file__).resolve().parents[2]
    for candidate in (repo.parent / "shared" / "data", repo / "shared" / "data"):
        if candidate.is_dir():
            return candidate
    return None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = _shared_data_dir()
    if path is None:
        pytest.skip("shared/data (real APPS-format test data) is not beside the repository")
    return path


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on the toy problems, with ChatML-style special tokens and chat template."""
    texts = []
    for record in read_toy_records():
        texts += [record["question"], record["starter_code"], *record["solutions"], *record["wrong_solutions"]]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
        padding_side="left",
    )


FIXTURES = Path(__file__).with_name("fixtures")


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _write_arrow_stream(rows: list[dict], path: Path) -> None:
    """An Arrow IPC stream file, the format of `datasets.save_to_disk` shards (TACO's `train/data-*.arrow`)."""
    table = pa.Table.from_pylist(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)


def _write_parquet(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


@pytest.fixture(scope="session")
def published(tmp_path_factory) -> dict[str, Path]:
    """Each format's fixture problems in its published layout (see `fixtures/make_fixtures.py`).

    `taco`: `train/` and `test/` with Arrow shards plus the `datasets` metadata files; `code_contests`:
    `data/{train,valid,test}-00000-of-00001.parquet`; `livecodebench`: `test.jsonl`, `test2.jsonl`; `deepcoder`:
    `<config>/<split>-00000-of-00001.parquet`.
    """
    root = tmp_path_factory.mktemp("published")
    for split in ("train", "test"):
        _write_arrow_stream(_read_jsonl(FIXTURES / "taco" / f"{split}.jsonl"),
                            root / "taco" / split / "data-00000-of-00001.arrow")
        (root / "taco" / split / "dataset_info.json").write_text("{}")
        (root / "taco" / split / "state.json").write_text('{"_data_files": []}')
    (root / "taco" / "dataset_dict.json").write_text('{"splits": ["train", "test"]}')
    for split in ("train", "valid", "test"):
        _write_parquet(_read_jsonl(FIXTURES / "code_contests" / f"{split}.jsonl"),
                       root / "code_contests" / "data" / f"{split}-00000-of-00001.parquet")
    shutil.copytree(FIXTURES / "livecodebench", root / "livecodebench")
    for path in sorted((FIXTURES / "deepcoder").glob("*/*.jsonl")):
        _write_parquet(_read_jsonl(path), root / "deepcoder" / path.parent.name / f"{path.stem}-00000-of-00001.parquet")
    return {fmt: root / fmt for fmt in ("taco", "code_contests", "livecodebench", "deepcoder")}


@pytest.fixture(scope="session")
def programs() -> dict[str, dict[str, str]]:
    """A right and a wrong program per fixture problem, keyed by the first line of its statement."""
    return json.loads((FIXTURES / "programs.json").read_text(encoding="utf-8"))
