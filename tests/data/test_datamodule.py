import json
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from transformers import AutoTokenizer

from lit_codegen.data.apps import load_apps
from lit_codegen.data.datamodule import IGNORE_INDEX, AppsDataModule, ResumableSampler, SFTDataModule, toy_data_dir
from lit_codegen.data.preprocess import preprocess, write_splits
from lit_codegen.data.procedural import generate as generate_procedural
from lit_codegen.data.prompts import format_answer
from lit_codegen.data.toy import TOY_PROBLEMS, read_toy_records

N_TOY = len(read_toy_records())
N_TOY_SOLUTIONS = sum(len(r["solutions"]) for r in read_toy_records())


def apps_dm(tokenizer, **kwargs):
    dm = AppsDataModule(**{"max_prompt_length": 1024, **kwargs})
    dm.connect(tokenizer)
    dm.setup("fit")
    return dm


def epoch_order(loader):
    return [i for batch in loader for i in batch["index"].tolist()]


def test_prompt_batches_are_left_padded_and_carry_the_tests(tokenizer):
    dm = apps_dm(tokenizer, val_batch_size=5)
    rows = pq.read_table(toy_data_dir("chat") / "test.parquet").to_pylist()
    batch = next(iter(dm.val_dataloader()))
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.shape == mask.shape and ids.shape[0] == 5 and ids.dtype == torch.long
    assert batch["index"].tolist() == [0, 1, 2, 3, 4]
    assert batch["problem_id"] == [r["problem_id"] for r in rows[:5]]
    assert batch["input_output"] == [r["input_output"] for r in rows[:5]]
    assert batch["difficulty"] == ["introductory"] * 5
    assert mask[:, -1].all()  # every prompt ends at the right edge, where generation starts
    for i, row in enumerate(rows[:5]):
        n = int(mask[i].sum())
        assert mask[i].tolist() == [0] * (ids.shape[1] - n) + [1] * n
        assert (ids[i, : ids.shape[1] - n] == tokenizer.pad_token_id).all()
        expected = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
        assert tokenizer.decode(ids[i, -n:]) == expected
        assert expected.endswith("<|im_start|>assistant\n")


def test_base_template_uses_raw_prompt(tokenizer):
    dm = AppsDataModule(template_type="base", max_prompt_length=1024)
    dm.connect(tokenizer)
    dm.setup("validate")
    assert "train" not in dm.datasets  # validate only needs test.parquet
    batch = next(iter(dm.val_dataloader()))
    row = pq.read_table(toy_data_dir("base") / "test.parquet").to_pylist()[0]
    n = int(batch["attention_mask"][0].sum())
    assert tokenizer.decode(batch["input_ids"][0, -n:]) == row["raw_prompt"]


def test_train_shuffle_is_seeded_and_covers_every_prompt_once(tokenizer):
    order_a = epoch_order(apps_dm(tokenizer, train_batch_size=4, seed=0).train_dataloader())
    order_b = epoch_order(apps_dm(tokenizer, train_batch_size=4, seed=0).train_dataloader())
    order_c = epoch_order(apps_dm(tokenizer, train_batch_size=4, seed=1).train_dataloader())
    assert order_a == order_b
    assert order_a != order_c
    assert sorted(order_a) == list(range(N_TOY))
    assert order_a != list(range(N_TOY))
    unshuffled = epoch_order(apps_dm(tokenizer, train_batch_size=4, shuffle=False).train_dataloader())
    assert unshuffled == list(range(N_TOY))
    assert epoch_order(apps_dm(tokenizer, val_batch_size=4).val_dataloader()) == list(range(N_TOY))


def test_resumable_sampler_shards_every_prompt_once_and_keeps_lightning_from_wrapping_it():
    shards = [list(ResumableSampler(N_TOY, 4, True, seed=0, world_size=2, rank=r)) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == N_TOY // 2
    assert sorted(shards[0] + shards[1]) == list(range(N_TOY))
    odd = [list(ResumableSampler(N_TOY - 1, 4, True, seed=0, world_size=2, rank=r)) for r in range(2)]
    assert len(odd[0]) == len(odd[1])  # padded: both ranks run the same number of batches
    assert set(odd[0] + odd[1]) == set(range(N_TOY - 1))
    assert isinstance(ResumableSampler(N_TOY, 4, True, seed=0), torch.utils.data.DistributedSampler)


@pytest.mark.parametrize("world_size", [1, 2])
def test_resumable_sampler_continues_a_straight_run_mid_epoch(world_size):
    straight = ResumableSampler(N_TOY, 4, True, seed=3, world_size=world_size, rank=world_size - 1)
    epochs = [list(straight), list(straight)]
    batches = len(epochs[0]) // 4 + bool(len(epochs[0]) % 4)
    resumed = ResumableSampler(N_TOY, 4, True, seed=3, start_batch=2, world_size=world_size, rank=world_size - 1)
    assert list(resumed) == epochs[0][8:]  # the rest of epoch 0 ...
    assert list(resumed) == epochs[1]  # ... then epoch 1 as in the straight run
    after_epoch = ResumableSampler(N_TOY, 4, True, seed=3, start_batch=batches, world_size=world_size,
                                   rank=world_size - 1)
    assert list(after_epoch) == epochs[1]
    assert epochs[0] != epochs[1]  # a new order every epoch


def test_resumable_sampler_len_is_a_whole_epoch_even_when_resumed_mid_epoch():
    # Lightning reads the number of batches per epoch once, from the first (resumed, shorter) epoch's loader
    assert len(ResumableSampler(N_TOY, 8, True, seed=0, start_batch=5)) == N_TOY
    assert len(ResumableSampler(N_TOY, 8, True, seed=0, start_batch=5, world_size=3, rank=1)) == -(-N_TOY // 3)


def test_long_prompts_are_dropped_with_a_logged_count(tokenizer, caplog):
    lengths = sorted(len(ex["input_ids"]) for ex in apps_dm(tokenizer).datasets["train"])
    limit = lengths[len(lengths) // 2]
    n_dropped = sum(n > limit for n in lengths)
    assert 0 < n_dropped < N_TOY
    with caplog.at_level(logging.WARNING, logger="lit_codegen.data.datamodule"):
        dm = apps_dm(tokenizer, max_prompt_length=limit)
    assert len(dm.datasets["train"]) == N_TOY - n_dropped
    assert f"train: dropped {n_dropped} of {N_TOY} prompts longer than max_prompt_length={limit}" in caplog.text
    with pytest.raises(ValueError, match="no train prompt fits max_prompt_length=5"):
        apps_dm(tokenizer, max_prompt_length=5)


def test_setup_without_tokenizer_is_a_clear_error():
    with pytest.raises(RuntimeError, match=r"setup\(\) ran before connect\(tokenizer\)"):
        AppsDataModule().setup("fit")
    with pytest.raises(RuntimeError, match=r"connect\(tokenizer\)"):
        SFTDataModule().setup("fit")


def test_preprocessed_apps_folder(tokenizer, shared_data, tmp_path):
    preprocess(str(shared_data / "apps" / "apps_coderl5.jsonl"), tmp_path, template_type="chat")
    dm = apps_dm(tokenizer, data_dir=str(tmp_path), max_prompt_length=100_000)
    ids = [ex["problem_id"] for split in ("train", "test") for ex in dm.datasets[split]]
    assert sorted(ids) == [1, 111, 2287, 2404, 4184]
    batch = next(iter(dm.train_dataloader()))
    assert all(json.loads(io)["inputs"] for io in batch["input_output"])


def test_training_reads_train_parquet_and_validation_test_parquet(tokenizer, tmp_path):
    """The toy files hold the same problems twice; here the splits differ: 20 problems to train on, 8 to validate."""
    problems = load_apps(TOY_PROBLEMS).problems
    write_splits({"train": problems[:20], "test": problems[20:]}, tmp_path, "chat")
    train_ids, test_ids = [p.problem_id for p in problems[:20]], [p.problem_id for p in problems[20:]]
    dm = apps_dm(tokenizer, data_dir=str(tmp_path), train_batch_size=4, val_batch_size=4)
    assert sorted(i for batch in dm.train_dataloader() for i in batch["problem_id"]) == train_ids
    assert [i for batch in dm.val_dataloader() for i in batch["problem_id"]] == test_ids
    sft = sft_dm(tokenizer, data_dir=str(tmp_path), batch_size=64, shuffle=False)
    for loader, split in ((sft.train_dataloader(), problems[:20]), (sft.val_dataloader(), problems[20:])):
        batch = next(iter(loader))
        assert len(batch["input_ids"]) == sum(len(p.solutions) for p in split)
        start = int((batch["labels"][0] != IGNORE_INDEX).nonzero()[0])  # the first answer: the split's first solution
        answer = tokenizer.decode(batch["input_ids"][0, start:int(batch["attention_mask"][0].sum())])
        assert answer == format_answer(split[0].solutions[0], "chat") + tokenizer.eos_token


def test_toy_cache_is_in_the_project_cache_dir(tokenizer, tmp_path, monkeypatch):
    monkeypatch.delenv("LIT_CODEGEN_CACHE", raising=False)
    assert toy_data_dir("chat") == Path.home() / ".cache" / "lit_codegen" / "toy_chat"
    monkeypatch.setenv("LIT_CODEGEN_CACHE", str(tmp_path / "cache"))
    dm = apps_dm(tokenizer, template_type="base")
    assert dm.resolved_data_dir == tmp_path / "cache" / "toy_base"
    assert sorted(p.name for p in dm.resolved_data_dir.iterdir()) == ["test.parquet", "train.parquet"]


def test_procedural_task_trains_on_its_training_split_and_validates_on_held_out(tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("LIT_CODEGEN_CACHE", str(tmp_path / "cache"))
    task = generate_procedural(0)
    dm = apps_dm(tokenizer, template_type="base", builtin_task="procedural", val_batch_size=50)
    assert dm.resolved_data_dir == tmp_path / "cache" / "procedural_base"
    assert sorted(i for batch in dm.train_dataloader() for i in batch["problem_id"]) == sorted(
        p.problem_id for p in task.train)
    assert [i for batch in dm.val_dataloader() for i in batch["problem_id"]] == [p.problem_id for p in task.held_out]
    # the training-problem pass rate's prompts: the first N training problems in file order, validation-sized batches
    rng = torch.get_rng_state()
    batches = list(dm.train_eval_dataloader(70))
    assert torch.equal(torch.get_rng_state(), rng)  # scoring it must not shift the run's sampling RNG
    assert [len(b["problem_id"]) for b in batches] == [50, 20]
    assert [i for b in batches for i in b["problem_id"]] == [p.problem_id for p in task.train[:70]]
    sft = sft_dm(tokenizer, template_type="base", builtin_task="procedural", batch_size=512, shuffle=False)
    assert len(next(iter(sft.train_dataloader()))["input_ids"]) == sum(task.sft) == 180  # the SFT part only


def test_unknown_builtin_task_is_a_clear_error():
    with pytest.raises(ValueError, match="--data.builtin_task must be one of"):
        AppsDataModule(builtin_task="apps")


@pytest.mark.parametrize("module", [AppsDataModule, SFTDataModule])
def test_parquet_written_with_another_template_is_a_clear_error(tokenizer, shared_data, tmp_path, module):
    preprocess(str(shared_data / "apps" / "apps_coderl5.jsonl"), tmp_path, template_type="base")
    dm = module(data_dir=str(tmp_path), template_type="chat")
    dm.connect(tokenizer)
    with pytest.raises(ValueError, match="template_type 'base' but the data module has template_type='chat'"):
        dm.setup("fit")


def test_parquet_with_only_verl_columns_names_the_missing_ones(tokenizer, tmp_path):
    row = {"data_source": "apps", "prompt": [{"role": "user", "content": "Q"}], "ability": "code",
           "reward_model": {"style": "rule", "ground_truth": "{}"}, "extra_info": {"index": 0}}
    for name in ("train.parquet", "test.parquet"):
        pq.write_table(pa.Table.from_pylist([row]), tmp_path / name)
    dm = AppsDataModule(data_dir=str(tmp_path))
    dm.connect(tokenizer)
    with pytest.raises(ValueError) as err:
        dm.setup("fit")
    message = str(err.value)
    assert "lacks the columns ['raw_prompt', 'problem_id', 'input_output', 'difficulty', 'template_type']" in message
    assert "python -m lit_codegen.data.preprocess" in message


def test_missing_data_dir_names_the_fix(tokenizer, tmp_path):
    dm = AppsDataModule(data_dir=str(tmp_path / "nothing"))
    dm.connect(tokenizer)
    with pytest.raises(FileNotFoundError, match="python -m lit_codegen.data.preprocess"):
        dm.setup("fit")


def sft_dm(tokenizer, **kwargs):
    dm = SFTDataModule(**{"max_length": 1024, **kwargs})
    dm.connect(tokenizer)
    dm.setup("fit")
    return dm


@pytest.mark.parametrize("template_type", ["chat", "base"])
def test_sft_batches_are_right_padded_with_loss_on_the_answer_only(tokenizer, template_type):
    dm = sft_dm(tokenizer, template_type=template_type, batch_size=6, shuffle=False)
    assert len(dm.datasets["train"]) == len(dm.datasets["test"]) == N_TOY_SOLUTIONS
    batch = next(iter(dm.train_dataloader()))
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    assert ids.shape == mask.shape == labels.shape and ids.shape[0] == 6
    first = read_toy_records()[0]
    for i in range(6):
        n = int(mask[i].sum())
        assert mask[i].tolist() == [1] * n + [0] * (ids.shape[1] - n)  # right padded
        assert (labels[i, n:] == IGNORE_INDEX).all()
        trained = labels[i] != IGNORE_INDEX
        start = int(trained.nonzero()[0])
        assert trained[start:n].all() and not trained[:start].any()  # prompt masked, answer + EOS trained
        assert (labels[i, start:n] == ids[i, start:n]).all()
        assert int(ids[i, n - 1]) == tokenizer.eos_token_id
        answer = format_answer(first["solutions"][i % 2], template_type) if i < 2 else None
        if answer is not None:  # rows 0 and 1 are problem 9000's two solutions (file order)
            assert tokenizer.decode(ids[i, start:n]) == answer + tokenizer.eos_token
        if template_type == "chat":
            assert tokenizer.decode(ids[i, :start]).endswith("<|im_start|>assistant\n")


def test_sft_drops_examples_over_max_length(tokenizer, caplog):
    lengths = sorted(len(ex["input_ids"]) for ex in sft_dm(tokenizer).datasets["train"])
    limit = lengths[len(lengths) // 2]
    with caplog.at_level(logging.WARNING, logger="lit_codegen.data.datamodule"):
        dm = sft_dm(tokenizer, max_length=limit)
    kept = sum(n <= limit for n in lengths)
    assert len(dm.datasets["train"]) == kept
    assert f"dropped {N_TOY_SOLUTIONS - kept} of {N_TOY_SOLUTIONS} SFT examples" in caplog.text


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory):
    from lit_codegen.models.tiny import build_tiny_model

    return AutoTokenizer.from_pretrained(build_tiny_model(tmp_path_factory.mktemp("tiny")))


def test_toy_problems_fit_the_tiny_model_budget(tiny_tokenizer):
    prompts = apps_dm(tiny_tokenizer, max_prompt_length=10_000).datasets["train"]
    assert max(len(ex["input_ids"]) for ex in prompts) <= 128
    pairs = sft_dm(tiny_tokenizer, max_length=10_000).datasets["train"]
    assert len(pairs) == N_TOY_SOLUTIONS
    assert max(len(ex["input_ids"]) for ex in pairs) <= 192


class _CountingModule(LightningModule):
    """Smallest module that consumes a batch: an embedding of the token ids, mean as the loss."""

    def __init__(self, vocab_size):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab_size, 1)
        self.seen = []

    def training_step(self, batch, batch_idx):
        self.seen.append(batch["input_ids"].shape)
        return self.embed(batch["input_ids"]).mean()

    def validation_step(self, batch, batch_idx):
        self.seen.append(batch["input_ids"].shape)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize(
    "dm", [AppsDataModule(train_batch_size=8, val_batch_size=8), SFTDataModule(batch_size=8)], ids=["apps", "sft"]
)
def test_data_modules_run_under_a_lightning_trainer(tokenizer, tmp_path, dm):
    dm.connect(tokenizer)
    module = _CountingModule(len(tokenizer))
    trainer = Trainer(
        fast_dev_run=2, accelerator="cpu", logger=False, enable_checkpointing=False, default_root_dir=tmp_path
    )
    trainer.fit(module, datamodule=dm)
    assert len(module.seen) == 4  # 2 training + 2 validation batches


# -- error messages, settings and plumbing, each with its exact value (mutation testing found them unchecked) --------
def test_errors_name_the_problem_and_the_fix(tokenizer, tmp_path):
    from types import SimpleNamespace

    from lit_codegen.data.datamodule import check_sizes, pad_token_id, prompt_texts

    missing = tmp_path / "nothing"
    with pytest.raises(FileNotFoundError) as err:
        read_split_of(missing)
    assert str(err.value) == (
        f"{missing / 'train.parquet'} not found: create it with `python -m lit_codegen.data.preprocess --local_dir "
        f"{missing}` or leave data_dir unset to use the bundled toy problems"
    )
    with pytest.raises(ValueError, match=r"^the tokenizer has neither a pad token nor an EOS token; set tokenizer\."):
        pad_token_id(SimpleNamespace(pad_token_id=None, eos_token_id=None))
    assert pad_token_id(SimpleNamespace(pad_token_id=3, eos_token_id=7)) == 3
    assert pad_token_id(SimpleNamespace(pad_token_id=None, eos_token_id=7)) == 7
    for no_template in (SimpleNamespace(), SimpleNamespace(chat_template=None)):
        with pytest.raises(ValueError, match=r"^template_type='chat' needs a tokenizer with a chat template; use "):
            prompt_texts([{"prompt": []}], "chat", no_template)
    check_sizes(num_workers=0, train_batch_size=1)
    for sizes, message in [
        ({"num_workers": -1}, "--data.num_workers must be a whole number >= 0, got -1"),
        ({"batch_size": 0}, "--data.batch_size must be a whole number >= 1, got 0"),
        ({"max_length": 1.5}, "--data.max_length must be a whole number >= 1, got 1.5"),
        ({"max_length": True}, "--data.max_length must be a whole number >= 1, got True"),
    ]:
        with pytest.raises(ValueError) as err:
            check_sizes(**sizes)
        assert str(err.value) == message
    for module, name in [(AppsDataModule, "max_prompt_length"), (AppsDataModule, "train_batch_size"),
                         (AppsDataModule, "val_batch_size"), (AppsDataModule, "num_workers"),
                         (SFTDataModule, "max_length"), (SFTDataModule, "batch_size"), (SFTDataModule, "num_workers")]:
        with pytest.raises(ValueError, match=f"^--data.{name} must be"):
            module(**{name: -1})
    for module in (AppsDataModule, SFTDataModule):
        with pytest.raises(RuntimeError) as err:
            module().setup("fit")
        assert str(err.value) == (
            f"{module.__name__}.setup() ran before connect(tokenizer): hand the model's tokenizer to the data module "
            "first (the lit-codegen CLI does this automatically)"
        )
        dm = module()
        dm.tokenizer = tokenizer
        with pytest.raises(RuntimeError, match=r"^call setup\(\) before asking for the train dataloader$"):
            dm.train_dataloader()
    dm = SFTDataModule()
    dm.tokenizer = SimpleNamespace(eos_token_id=None, pad_token_id=0)
    with pytest.raises(ValueError, match=r"^SFT needs a tokenizer with an EOS token \(the answer must teach"):
        dm.setup("fit")
    with pytest.raises(ValueError, match=r"^no training example: 56 \(problem, solution\) pairs, none within max_"):
        sft_dm(tokenizer, max_length=5)


def read_split_of(data_dir):
    from lit_codegen.data.datamodule import read_split

    return read_split(data_dir, "train", ["problem_id"], "chat")


def test_a_split_is_read_with_only_the_asked_columns_and_its_template_named(tokenizer, tmp_path):
    write_splits({"train": load_apps(TOY_PROBLEMS).problems[:3], "test": []}, tmp_path / "chat", "chat")
    assert read_split_of(tmp_path / "chat") == [{"problem_id": 9000}, {"problem_id": 9001}, {"problem_id": 9002}]
    write_splits({"train": load_apps(TOY_PROBLEMS).problems[:3], "test": []}, tmp_path / "base", "base")
    with pytest.raises(ValueError) as err:
        read_split_of(tmp_path / "base")
    assert str(err.value) == (
        f"{tmp_path / 'base' / 'train.parquet'} was written with template_type 'base' but the data module has "
        "template_type='chat': set the data module's template_type to match, or re-run "
        "`python -m lit_codegen.data.preprocess --template_type chat`"
    )


def test_prompts_get_special_tokens_only_under_the_base_template(tokenizer, monkeypatch):
    """The chat template writes its own special tokens; a base prompt gets the tokenizer's (e.g. a BOS)."""
    from lit_codegen.data import datamodule
    from lit_codegen.data.datamodule import encode_prompts, prompt_texts

    calls = []

    def fake(texts, add_special_tokens):
        calls.append(add_special_tokens)
        return {"input_ids": [[len(t)] for t in texts]}

    assert encode_prompts(["ab", "c"], "base", fake) == [[2], [1]] and calls == [True]
    assert encode_prompts(["ab"], "chat", fake) == [[2]] and calls == [True, False]
    row = {"prompt": [{"role": "user", "content": "hi"}], "raw_prompt": "raw"}
    assert prompt_texts([row], "base", tokenizer) == ["raw"]
    (chat,) = prompt_texts([row], "chat", tokenizer)
    assert isinstance(chat, str) and chat.endswith("<|im_start|>assistant\n")
    seen = []
    real = datamodule.encode_prompts
    monkeypatch.setattr(datamodule, "encode_prompts", lambda t, kind, tok: seen.append(kind) or real(t, kind, tok))
    apps_dm(tokenizer, template_type="base")
    sft_dm(tokenizer, template_type="base")
    assert seen == ["base"] * 4  # train and test of each module


def test_batches_are_long_tensors():
    from lit_codegen.data.datamodule import PromptCollator, SFTCollator

    rest = {"problem_id": 1, "input_output": "", "difficulty": "", "data_source": "taco"}
    prompts = PromptCollator(0)([{"input_ids": [5, 6], "index": 3, **rest}, {"input_ids": [7], "index": 4, **rest}])
    assert prompts["input_ids"].tolist() == [[5, 6], [0, 7]] and prompts["attention_mask"].tolist() == [[1, 1], [0, 1]]
    assert prompts["index"].tolist() == [3, 4] and prompts["data_source"] == ["taco", "taco"]
    sft = SFTCollator(0)([{"input_ids": [5, 6, 8], "prompt_length": 1}, {"input_ids": [7], "prompt_length": 1}])
    assert sft["labels"].tolist() == [[IGNORE_INDEX, 6, 8], [IGNORE_INDEX] * 3]
    for batch in (prompts, sft):
        assert all(t.dtype == torch.long for t in batch.values() if isinstance(t, torch.Tensor))


def test_sampler_known_orders():
    """Epoch e shuffles with seed + e; a set padded by wrapping around to a multiple of the world size (5 over 3
    ranks: 6); a set smaller than a batch is one batch per epoch."""
    sampler = ResumableSampler(5, 4, True, seed=7)
    for epoch in range(3):
        assert list(sampler) == torch.randperm(5, generator=torch.Generator().manual_seed(7 + epoch)).tolist()
    shards = [ResumableSampler(5, 1, False, seed=0, world_size=3, rank=r).order(0) for r in range(3)]
    assert shards == [[0, 3], [1, 4], [2, 0]]
    resumed = ResumableSampler(3, 4, True, seed=7, start_batch=1)  # one batch per epoch: starts at epoch 1
    assert list(resumed) == torch.randperm(3, generator=torch.Generator().manual_seed(8)).tolist()


def test_defaults_are_the_recipe_s():
    apps, sft = AppsDataModule(), SFTDataModule()
    assert (apps.max_prompt_length, apps.train_batch_size, apps.val_batch_size) == (512, 64, 64)
    assert (apps.num_workers, apps.shuffle, apps.seed) == (0, True, 0)
    assert (sft.max_length, sft.batch_size, sft.num_workers, sft.shuffle, sft.seed) == (512, 16, 0, True, 0)


def test_loaders_resume_where_the_trainer_is_and_leave_the_global_rng_alone(tokenizer):
    """The training loader starts at the model's PPO iteration on this rank's shard; validation is every prompt in
    file order on every rank; iterating any loader draws nothing from the global RNG (a resumed run's sampling would
    shift); SFT shuffles from its seed."""
    from types import SimpleNamespace

    dm = apps_dm(tokenizer, train_batch_size=4, val_batch_size=5, seed=3, num_workers=0)
    dm.trainer = SimpleNamespace(lightning_module=SimpleNamespace(ppo_iteration=5), world_size=2, global_rank=1)
    straight = ResumableSampler(N_TOY, 4, True, 3, start_batch=5, world_size=2, rank=1)
    assert epoch_order(dm.train_dataloader()) == list(straight)
    assert epoch_order(dm.val_dataloader()) == list(range(N_TOY))
    sft_a, sft_b = sft_dm(tokenizer, seed=1, batch_size=4), sft_dm(tokenizer, seed=1, batch_size=4)
    unshuffled = sft_dm(tokenizer, shuffle=False, batch_size=4)
    first = [b["input_ids"].tolist() for b in sft_a.train_dataloader()]
    assert first == [b["input_ids"].tolist() for b in sft_b.train_dataloader()]
    assert first != [b["input_ids"].tolist() for b in unshuffled.train_dataloader()]
    assert [b["input_ids"].tolist() for b in unshuffled.train_dataloader()] == [
        b["input_ids"].tolist() for b in unshuffled.val_dataloader()]  # the toy data writes both splits alike
    torch.manual_seed(0)
    before = torch.get_rng_state()
    for loader in (dm.train_dataloader(), dm.val_dataloader(), sft_a.train_dataloader(), sft_a.val_dataloader()):
        list(loader)
    assert torch.equal(torch.get_rng_state(), before)
    assert dm.train_dataloader().num_workers == 0 and AppsDataModule(num_workers=2).num_workers == 2
