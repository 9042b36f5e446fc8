"""Lightning data modules over the preprocessed parquet files: prompts for PPO, (prompt, solution) pairs for SFT.

Both read `DIR/train.parquet` and `DIR/test.parquet` written by `python -m lit_codegen.data.preprocess` (validation
uses test.parquet); `data_dir=None` uses a bundled task, `builtin_task`: `toy` (`lit_codegen.data.toy`, the same 28
problems in both files) or `procedural` (`lit_codegen.data.procedural`, generated, with a held-out test split of new
combinations). The tokenizer is handed over explicitly with `connect(tokenizer)` after the model is built
(LightningCLI does it, see `lit_codegen.cli`).

Prompt text: `template_type="chat"` renders the `prompt` messages with the tokenizer's chat template (generation
prompt appended); `"base"` uses the `raw_prompt` column (the APPS completion prompt). It must be the template the
files were written with (their `template_type` column); a mismatch is an error that names both.

    dm = AppsDataModule(data_dir=None, train_batch_size=8)
    dm.connect(tokenizer)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))  # input_ids (B, P) left padded, attention_mask, problem_id, ...
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Literal

import pyarrow.parquet as pq
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from lit_codegen.data.procedural import write_procedural_parquet
from lit_codegen.data.prompts import check_template_type, format_answer
from lit_codegen.data.toy import write_toy_parquet
from lit_codegen.models.loading import cache_dir

log = logging.getLogger(__name__)

SPLIT_FILES = {"train": "train.parquet", "test": "test.parquet"}
IGNORE_INDEX = -100
BUILTIN_TASKS = {"toy": write_toy_parquet, "procedural": write_procedural_parquet}
"""The bundled tasks a data module uses when `data_dir` is None: name -> writer `(out_dir, template_type)`."""
BuiltinTask = Literal["toy", "procedural"]


def toy_data_dir(template_type: str) -> Path:
    """Folder the toy problems are written to when a data module gets `data_dir=None` (and `builtin_task="toy"`)."""
    return builtin_data_dir("toy", template_type)


def builtin_data_dir(task: str, template_type: str) -> Path:
    """Folder a bundled task is written to when a data module gets `data_dir=None`.

    It is in the project's cache (`$LIT_CODEGEN_CACHE`, default `~/.cache/lit_codegen`, as for the tiny model), so
    another user's folder on a shared machine is never in the way.
    """
    return cache_dir() / f"{task}_{template_type}"


def read_split(data_dir: str | Path, split: str, columns: list[str], template_type: str) -> list[dict[str, Any]]:
    """Rows of `data_dir/{split}.parquet` as dicts with the given columns.

    Args:
        data_dir: Folder written by `python -m lit_codegen.data.preprocess`.
        split: `train` or `test`.
        columns: Columns to read.
        template_type: The data module's template; the file must have been written with the same one.

    Raises:
        FileNotFoundError: If the file is missing (the message says how to create it).
        ValueError: If the file lacks columns that `lit_codegen.data.preprocess` writes (e.g. a parquet with only
            verl's five columns) or was written with another template type.
    """
    path = Path(data_dir) / SPLIT_FILES[split]
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: create it with `python -m lit_codegen.data.preprocess --local_dir {data_dir}` "
            "or leave data_dir unset to use the bundled toy problems"
        )
    columns = [*columns, "template_type"]
    missing = [c for c in columns if c not in pq.read_schema(path).names]
    if missing:
        raise ValueError(
            f"{path} lacks the columns {missing}: the data modules read files written by "
            f"`python -m lit_codegen.data.preprocess --local_dir {data_dir}` (verl's five columns are not enough)"
        )
    rows = pq.read_table(path, columns=columns).to_pylist()
    written_with = sorted({row.pop("template_type") for row in rows})
    if written_with and written_with != [template_type]:
        raise ValueError(
            f"{path} was written with template_type {', '.join(map(repr, written_with))} but the data module has "
            f"template_type={template_type!r}: set the data module's template_type to match, or re-run "
            f"`python -m lit_codegen.data.preprocess --template_type {template_type}`"
        )
    return rows


def pad_token_id(tokenizer: Any) -> int:
    """The tokenizer's pad id, falling back to its EOS id (padding is masked out either way)."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise ValueError("the tokenizer has neither a pad token nor an EOS token; set tokenizer.pad_token")
    return pad_id


def prompt_texts(rows: list[dict[str, Any]], template_type: str, tokenizer: Any) -> list[str]:
    """Prompt strings of parquet rows: chat template over `prompt` (chat) or the `raw_prompt` column (base)."""
    if template_type == "base":
        return [row["raw_prompt"] for row in rows]
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("template_type='chat' needs a tokenizer with a chat template; use template_type='base'")
    return [tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False) for row in rows]


def encode_prompts(texts: list[str], template_type: str, tokenizer: Any) -> list[list[int]]:
    """Token ids of prompt strings; special tokens are only added for `base` (a chat template already has them)."""
    return tokenizer(texts, add_special_tokens=template_type == "base")["input_ids"]


def check_sizes(**sizes: int) -> None:
    """Raise ValueError naming the first data-module size that is not a whole number >= 1 (`num_workers`: >= 0)."""
    for name, value in sizes.items():
        minimum = 0 if name == "num_workers" else 1
        if type(value) is not int or value < minimum:
            raise ValueError(f"--data.{name} must be a whole number >= {minimum}, got {value}")


class PromptCollator:
    """Collate prompt examples into a LEFT-padded batch (prompts end where generation starts)."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        """Batch of B examples.

        Returns:
            `input_ids` (B, P) long, left padded with the pad id; `attention_mask` (B, P) long, 1 = prompt token;
            `index` (B,) long row index in the parquet file; `problem_id` list[int]; `input_output` list[str]
            (JSON tests); `difficulty` list[str]; `data_source` list[str].
        """
        width = max(len(ex["input_ids"]) for ex in examples)
        input_ids = torch.full((len(examples), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
        for i, ex in enumerate(examples):
            n = len(ex["input_ids"])
            input_ids[i, width - n :] = torch.tensor(ex["input_ids"], dtype=torch.long)
            attention_mask[i, width - n :] = 1
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "index": torch.tensor([ex["index"] for ex in examples], dtype=torch.long),
            "problem_id": [ex["problem_id"] for ex in examples],
            "input_output": [ex["input_output"] for ex in examples],
            "difficulty": [ex["difficulty"] for ex in examples],
            "data_source": [ex["data_source"] for ex in examples],
        }


class SFTCollator:
    """Collate (prompt + answer) examples into a RIGHT-padded batch with labels on answer tokens only."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Batch of B examples.

        Returns:
            `input_ids` (B, T) long, right padded; `attention_mask` (B, T) long, 1 = real token; `labels` (B, T) long,
            the input ids on answer tokens (solution + EOS) and -100 on prompt and padding.
        """
        width = max(len(ex["input_ids"]) for ex in examples)
        input_ids = torch.full((len(examples), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
        labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
        for i, ex in enumerate(examples):
            ids = torch.tensor(ex["input_ids"], dtype=torch.long)
            input_ids[i, : len(ids)] = ids
            attention_mask[i, : len(ids)] = 1
            labels[i, ex["prompt_length"] : len(ids)] = ids[ex["prompt_length"] :]
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


class ResumableSampler(torch.utils.data.DistributedSampler):
    """Training order that is a pure function of (seed, epoch), sharded over ranks, able to start mid-epoch.

    Epoch e visits `torch.randperm(n, generator=seed + e)` (or 0..n-1 without shuffling), padded by wrapping around to
    a multiple of the world size so every rank gets as many batches (sharded models need every rank in each step);
    rank r takes every world-size-th index from position r. `start_batch` counts the batches already trained over the
    whole run (the PPO iteration of a resumed run): iteration starts at that epoch and offset, so a resumed run sees
    exactly the prompts a straight run would. One `iter()` = one epoch. It subclasses `DistributedSampler` only so
    that Lightning uses it as it is instead of wrapping it; the epoch is its own, so `set_epoch` is ignored.

    `len()` is always a whole epoch, also while the first epoch of a resumed run is shorter: Lightning reads the
    number of batches per epoch once and keeps it for every later epoch, and it counts the batches already run in the
    resumed epoch itself (from the checkpoint's loop state), so it expects just the remaining ones from the first
    `iter()`.
    """

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int, start_batch: int = 0,
                 world_size: int = 1, rank: int = 0) -> None:
        super().__init__(range(n), num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed)
        self.n = n
        per_epoch = -(-n // world_size)  # indices per rank and epoch
        batches_per_epoch = max(1, -(-per_epoch // batch_size))
        self.epoch, first = divmod(start_batch, batches_per_epoch)
        self.skip = first * batch_size  # per rank

    def order(self, epoch: int) -> list[int]:
        """This rank's order in one epoch (before skipping)."""
        order = list(range(self.n))
        if self.shuffle:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()
        padded = order + order[: (-len(order)) % self.num_replicas]
        return padded[self.rank :: self.num_replicas]

    def set_epoch(self, epoch: int) -> None:
        """Ignored: the sampler counts its own epochs (see the class docstring)."""

    def __iter__(self):
        indices = self.order(self.epoch)[self.skip :]
        self.epoch, self.skip = self.epoch + 1, 0
        return iter(indices)

    def __len__(self) -> int:
        return -(-self.n // self.num_replicas)  # a whole epoch, see the class docstring


class _TokenizedDataModule(LightningDataModule):
    """Shared plumbing: data folder (or a bundled task's cache), tokenizer hand-off, split reading."""

    def __init__(self, data_dir: str | None, template_type: str, builtin_task: str = "toy") -> None:
        super().__init__()
        check_template_type(template_type)
        if builtin_task not in BUILTIN_TASKS:
            raise ValueError(f"--data.builtin_task must be one of {sorted(BUILTIN_TASKS)}, got {builtin_task!r}")
        self.data_dir = data_dir
        self.template_type = template_type
        self.builtin_task = builtin_task
        self.tokenizer: Any = None
        self._builtin_written = False

    def connect(self, tokenizer: Any) -> None:
        """Hand over the model's tokenizer (a transformers tokenizer); call before `setup`."""
        pad_token_id(tokenizer)  # fail early on a tokenizer that cannot pad
        self.tokenizer = tokenizer

    @property
    def resolved_data_dir(self) -> Path:
        """The folder with the parquet files: `data_dir`, or the bundled task's cache if `data_dir` is None."""
        if self.data_dir is not None:
            return Path(self.data_dir)
        return builtin_data_dir(self.builtin_task, self.template_type)

    def _require_tokenizer(self) -> Any:
        if self.tokenizer is None:
            raise RuntimeError(
                f"{type(self).__name__}.setup() ran before connect(tokenizer): hand the model's tokenizer to the "
                "data module first (the lit-codegen CLI does this automatically)"
            )
        return self.tokenizer

    def setup(self, stage: str | None = None) -> None:
        """Read and tokenize the splits the stage needs (train for `fit`; test for every stage)."""
        tokenizer = self._require_tokenizer()
        for split in ["train", "test"] if stage in (None, "fit") else ["test"]:
            if split not in self.datasets:
                self.datasets[split] = self._tokenize(split, tokenizer)

    def _tokenize(self, split: str, tokenizer: Any) -> list[dict[str, Any]]:
        raise NotImplementedError

    def _read(self, split: str, columns: list[str]) -> list[dict[str, Any]]:
        if self.data_dir is None and not self._builtin_written:
            # Rewritten on every setup so the cache never lags behind the installed package; the writes are atomic
            # and identical on every rank, so ranks may race.
            BUILTIN_TASKS[self.builtin_task](self.resolved_data_dir, self.template_type)
            self._builtin_written = True
        return read_split(self.resolved_data_dir, split, columns, self.template_type)


class AppsDataModule(_TokenizedDataModule):
    """Tokenized APPS prompts for PPO rollouts: left-padded prompt batches plus the tests to score responses.

    Args:
        data_dir: Folder with train.parquet and test.parquet from `lit_codegen.data.preprocess`; None = the bundled
            task named by `builtin_task`.
        template_type: Prompt template: `chat` (chat template over the `prompt` messages) or `base` (`raw_prompt`);
            the one the parquet files were written with.
        builtin_task: The bundled task used when `data_dir` is None: `toy` (28 problems, the same in train and test)
            or `procedural` (generated; test holds new (operation, constant) combinations, see
            `lit_codegen.data.procedural`).
        max_prompt_length: Prompts with more tokens are dropped (the count is logged).
        train_batch_size: Prompts per training batch and rank (before `rollout.n` samples each).
        val_batch_size: Prompts per validation batch and rank.
        num_workers: DataLoader worker processes.
        shuffle: Shuffle the training prompts (deterministically, from `seed`).
        seed: Seed of the training shuffle.
    """

    def __init__(
        self,
        data_dir: str | None = None,
        template_type: str = "chat",
        builtin_task: BuiltinTask = "toy",
        max_prompt_length: int = 512,
        train_batch_size: int = 64,
        val_batch_size: int = 64,
        num_workers: int = 0,
        shuffle: bool = True,
        seed: int = 0,
    ) -> None:
        check_sizes(max_prompt_length=max_prompt_length, train_batch_size=train_batch_size,
                    val_batch_size=val_batch_size, num_workers=num_workers)
        super().__init__(data_dir, template_type, builtin_task)
        self.save_hyperparameters()
        self.max_prompt_length = max_prompt_length
        self.train_batch_size = train_batch_size
        self.val_batch_size = val_batch_size
        self.num_workers = num_workers
        self.shuffle = shuffle
        self.seed = seed
        self.datasets: dict[str, list[dict[str, Any]]] = {}

    def _tokenize(self, split: str, tokenizer: Any) -> list[dict[str, Any]]:
        rows = self._read(split, ["prompt", "raw_prompt", "problem_id", "input_output", "difficulty", "data_source"])
        ids = encode_prompts(prompt_texts(rows, self.template_type, tokenizer), self.template_type, tokenizer)
        examples = [
            {
                "input_ids": ids[i],
                "index": i,
                "problem_id": row["problem_id"],
                "input_output": row["input_output"],
                "difficulty": row["difficulty"],
                "data_source": row["data_source"],
            }
            for i, row in enumerate(rows)
            if len(ids[i]) <= self.max_prompt_length
        ]
        if len(examples) < len(rows):
            log.warning(
                "%s: dropped %d of %d prompts longer than max_prompt_length=%d tokens",
                split,
                len(rows) - len(examples),
                len(rows),
                self.max_prompt_length,
            )
        if not examples:
            raise ValueError(f"no {split} prompt fits max_prompt_length={self.max_prompt_length}; raise it")
        return examples

    def _loader(self, split: str, batch_size: int, sampler: torch.utils.data.Sampler | None = None) -> DataLoader:
        if split not in self.datasets:
            raise RuntimeError(f"call setup() before asking for the {split} dataloader")
        return DataLoader(
            self.datasets[split],
            batch_size=batch_size,
            sampler=sampler,
            # Its own generator: otherwise every iter() draws a seed from the global RNG, which would shift the
            # sampling RNG of a resumed run (and of a run that validates) away from a straight run's.
            generator=torch.Generator().manual_seed(self.seed),
            num_workers=self.num_workers,
            collate_fn=PromptCollator(pad_token_id(self.tokenizer)),
        )

    def train_dataloader(self) -> DataLoader:
        """Training prompts, shuffled per epoch from `seed` if `shuffle`, resuming after the model's last batch.

        The model's `prompt_batches` (batches drawn; more than its PPO iterations under dynamic sampling), else its
        `ppo_iteration`.
        """
        trainer = getattr(self, "trainer", None)
        model = trainer.lightning_module if trainer is not None else None
        start = getattr(model, "prompt_batches", getattr(model, "ppo_iteration", 0)) if model is not None else 0
        world_size, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sampler = ResumableSampler(len(self.datasets.get("train", ())), self.train_batch_size, self.shuffle,
                                   self.seed, start_batch=start, world_size=world_size, rank=rank)
        return self._loader("train", self.train_batch_size, sampler)

    def train_eval_dataloader(self, limit: int) -> DataLoader:
        """The first `limit` training prompts in file order, batched like validation: a training-set pass rate.

        `PassRateValidation(train_problems=N)` scores them on the validation schedule (`val/train_pass_rate`), so
        the held-out curve has a training curve beside it.
        """
        if "train" not in self.datasets:
            raise RuntimeError("call setup('fit') before asking for the train_eval dataloader")
        sampler = ResumableSampler(min(limit, len(self.datasets["train"])), self.val_batch_size, shuffle=False,
                                   seed=self.seed)
        return self._loader("train", self.val_batch_size, sampler)

    def val_dataloader(self) -> DataLoader:
        """Validation prompts (test.parquet), in file order, every batch on every rank.

        The ranks share the batches themselves, round robin (`PPOModule.validation_step`, `PassRateValidation`): a
        `DistributedSampler` subclass over one replica keeps Lightning from padding the set with repeated prompts.
        """
        sampler = ResumableSampler(len(self.datasets.get("test", ())), self.val_batch_size, shuffle=False,
                                   seed=self.seed, world_size=1, rank=0)
        return self._loader("test", self.val_batch_size, sampler)

    def test_dataloader(self) -> DataLoader:
        """Test prompts: the same as validation (test.parquet)."""
        return self.val_dataloader()


class SFTDataModule(_TokenizedDataModule):
    """(prompt, reference solution) pairs for the supervised warm start; the loss covers the answer tokens only.

    Every entry of a problem's `solutions` column is a correct program and becomes one example: the prompt (as in
    `AppsDataModule`) followed by the answer the policy should give (`chat`: a fenced python block; `base`: the raw
    code) and the EOS token.

    Args:
        data_dir: Folder with train.parquet and test.parquet from `lit_codegen.data.preprocess`; None = the bundled
            task named by `builtin_task`.
        template_type: Prompt template: `chat` (chat template over the `prompt` messages) or `base` (`raw_prompt`);
            the one the parquet files were written with.
        builtin_task: The bundled task used when `data_dir` is None: `toy` or `procedural` (whose training file has
            solutions only for its SFT part).
        max_length: Examples (prompt + answer + EOS) with more tokens are dropped (the count is logged).
        batch_size: Examples per batch (training and validation).
        num_workers: DataLoader worker processes.
        shuffle: Shuffle the training examples (deterministically, from `seed`).
        seed: Seed of the training shuffle.
    """

    def __init__(
        self,
        data_dir: str | None = None,
        template_type: str = "chat",
        builtin_task: BuiltinTask = "toy",
        max_length: int = 512,
        batch_size: int = 16,
        num_workers: int = 0,
        shuffle: bool = True,
        seed: int = 0,
    ) -> None:
        check_sizes(max_length=max_length, batch_size=batch_size, num_workers=num_workers)
        super().__init__(data_dir, template_type, builtin_task)
        self.save_hyperparameters()
        self.max_length = max_length
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.shuffle = shuffle
        self.seed = seed
        self.datasets: dict[str, list[dict[str, Any]]] = {}

    def _require_tokenizer(self) -> Any:
        tokenizer = super()._require_tokenizer()
        if tokenizer.eos_token_id is None:
            raise ValueError("SFT needs a tokenizer with an EOS token (the answer must teach the model to stop)")
        return tokenizer

    def _tokenize(self, split: str, tokenizer: Any) -> list[dict[str, Any]]:
        rows = self._read(split, ["prompt", "raw_prompt", "solutions"])
        prompt_ids = encode_prompts(prompt_texts(rows, self.template_type, tokenizer), self.template_type, tokenizer)
        pairs = [(i, program) for i, row in enumerate(rows) for program in json.loads(row["solutions"])]
        answers = [format_answer(program, self.template_type) for _, program in pairs]
        answer_ids = tokenizer(answers, add_special_tokens=False)["input_ids"] if answers else []
        examples = []
        for (i, _), ids in zip(pairs, answer_ids):
            full = prompt_ids[i] + ids + [tokenizer.eos_token_id]
            if len(full) <= self.max_length:
                examples.append({"input_ids": full, "prompt_length": len(prompt_ids[i])})
        if len(examples) < len(pairs):
            log.warning(
                "%s: dropped %d of %d SFT examples longer than max_length=%d tokens",
                split,
                len(pairs) - len(examples),
                len(pairs),
                self.max_length,
            )
        if split == "train" and not examples:
            raise ValueError(f"no training example: {len(pairs)} (problem, solution) pairs, none within max_length")
        return examples

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if split not in self.datasets:
            raise RuntimeError(f"call setup() before asking for the {split} dataloader")
        return DataLoader(
            self.datasets[split],
            batch_size=self.batch_size,
            shuffle=shuffle,
            # its own generator, shuffled or not: an iter() without one draws a seed from the global RNG
            generator=torch.Generator().manual_seed(self.seed),
            num_workers=self.num_workers,
            collate_fn=SFTCollator(pad_token_id(self.tokenizer)),
        )

    def train_dataloader(self) -> DataLoader:
        """Training pairs, shuffled from `seed` if `shuffle`."""
        return self._loader("train", self.shuffle)

    def val_dataloader(self) -> DataLoader:
        """Validation pairs (test.parquet), in file order."""
        return self._loader("test", False)
