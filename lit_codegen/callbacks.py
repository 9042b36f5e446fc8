"""`PassRateValidation`: score the validation problems every N PPO iterations, before training and at the end.

Generation is greedy by default (`model.rollout.val_greedy`); with `val_n > 1` samples per prompt it reports pass@k.
Prompts are sharded over ranks batch by batch (batch i goes to rank i mod world size: no duplicates, no drops; a rank
with no batch left still generates once per round, because sharded models need every rank in each forward pass) and
the torchmetrics states are summed across ranks, so every rank computes the same numbers; rank zero logs them.
A table of sample generations goes to the logger (a wandb table, or `val_samples.jsonl` next to the CSV metrics).
With `train_problems=N` the first N training problems are scored the same way on the same schedule and logged as
`val/train_pass_rate` and `val/train_strict_accuracy`: the training curve beside the held-out one.
"""

from __future__ import annotations

import json
import os

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from lit_codegen.data.prompts import extract_program, has_code_block


def rank_batch_indices(n_batches: int, world_size: int, rank: int) -> list[int]:
    """Batch i goes to rank i mod world size; every rank gets the same number of rounds (-1 = nothing left)."""
    rounds = -(-n_batches // world_size)
    return [r * world_size + rank if r * world_size + rank < n_batches else -1 for r in range(rounds)]


def _scores(pl_module: LightningModule) -> bool:
    """Whether the module generates and scores programs (PPOModule), i.e. has something to validate."""
    return callable(getattr(pl_module, "score_batch", None))


class PassRateValidation(Callback):
    """Validation pass rate on a PPO-iteration schedule.

    The `lit-codegen` CLI adds one from the config's `validation:` group. It validates modules that generate and score
    (`PPOModule`); for others, such as `SFTModule`, it does nothing.

    Args:
        every_n_iterations: Validate after every N PPO iterations (0 = never during training).
        before_training: Validate the initial policy before the first iteration.
        at_end: Validate after the last iteration.
        num_samples_logged: Sample generations per validation written to the logger.
        train_problems: Also score the first N training problems (file order) at every validation, logged as
            `val/train_pass_rate` and `val/train_strict_accuracy` (0 = off; needs a data module with
            `train_eval_dataloader`, as `AppsDataModule`).
    """

    def __init__(
        self, every_n_iterations: int = 200, before_training: bool = True, at_end: bool = True,
        num_samples_logged: int = 8, train_problems: int = 0,
    ) -> None:
        if train_problems < 0:
            raise ValueError(f"--validation.train_problems must be >= 0, got {train_problems}")
        self.every_n_iterations = every_n_iterations
        self.before_training = before_training
        self.at_end = at_end
        self.num_samples_logged = num_samples_logged
        self.train_problems = train_problems
        self._last_validated: int | None = None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Validate the starting policy (skipped when resuming: that iteration was validated before)."""
        if self.before_training and _scores(pl_module) and pl_module.ppo_iteration == 0:
            self.validate(trainer, pl_module)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args) -> None:
        """Validate on schedule and after the last iteration."""
        if not _scores(pl_module):
            return
        it = pl_module.ppo_iteration
        scheduled = self.every_n_iterations > 0 and it % self.every_n_iterations == 0
        last = self.at_end and (it == trainer.max_steps or (trainer.is_last_batch and
                                                              trainer.current_epoch + 1 == trainer.max_epochs))
        if scheduled or last:
            self.validate(trainer, pl_module)

    def validate(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, float]:
        """Score all validation prompts with the current policy and log `val/*` at the current iteration."""
        it = pl_module.ppo_iteration
        if self._last_validated == it:  # idempotent: hooks can fire twice for one iteration
            return {}
        self._last_validated = it
        samples = []
        values = self._score(trainer, pl_module, trainer.datamodule.val_dataloader(), samples)
        if self.train_problems:
            train = self._score(trainer, pl_module, trainer.datamodule.train_eval_dataloader(self.train_problems), [])
            values |= {"val/train_pass_rate": train["val/pass_rate"],
                       "val/train_strict_accuracy": train["val/strict_accuracy"]}
        trainer.callback_metrics.update({k: torch.tensor(v) for k, v in values.items()})
        self._log(trainer, values, samples, it)
        return values

    def _score(self, trainer: Trainer, pl_module: LightningModule, loader, samples: list[dict]) -> dict[str, float]:
        """`val/*` metrics of one set of prompts; appends up to `num_samples_logged` generations to `samples`."""
        it = pl_module.ppo_iteration
        metrics = pl_module.val_metrics
        metrics.reset()
        batches = list(loader)
        for i in rank_batch_indices(len(batches), trainer.world_size, trainer.global_rank):
            batch = pl_module.transfer_batch_to_device(batches[i if i >= 0 else 0], pl_module.device, 0)
            if i < 0:  # no batch left for this rank: generate anyway, sharded models need every rank's forward passes
                pl_module.generate(batch, pl_module.val_sampling())
                continue
            roll, results = pl_module.score_batch(batch)
            problem_index = roll.prompt_index.tolist()
            metrics.update(results, [batch["difficulty"][j] for j in problem_index],
                           group_size=pl_module.rollout_args.val_n,
                           sources=[batch["data_source"][j] for j in problem_index] if "data_source" in batch else None,
                           no_code=[not has_code_block(t) for t in roll.texts], truncated=roll.truncated.tolist())
            for j, res in enumerate(results[: max(0, self.num_samples_logged - len(samples))]):
                samples.append({"iteration": it, "problem_id": int(batch["problem_id"][problem_index[j]]),
                                "response": roll.texts[j], "pass_rate": res.pass_rate, "outcomes": res.outcomes})
        values = metrics.compute()  # every rank must reach this: the states are summed across ranks
        metrics.reset()
        return values

    @rank_zero_only
    def _log(self, trainer: Trainer, values: dict[str, float], samples: list[dict], it: int) -> None:
        for logger in trainer.loggers:
            logger.log_metrics(values, step=it)
            if isinstance(logger, WandbLogger) and samples:
                columns = list(samples[0])
                logger.log_table("val/samples", columns=columns, data=[[str(s[c]) for c in columns] for s in samples])
            elif samples and logger.log_dir:
                os.makedirs(logger.log_dir, exist_ok=True)
                with open(os.path.join(logger.log_dir, "val_samples.jsonl"), "a") as f:
                    f.writelines(json.dumps(s) + "\n" for s in samples)
        summary = "  ".join(f"{k}={v:.3f}" for k, v in values.items()
                            if "/score_band/" not in k and "/verdict/" not in k)
        print(f"[validation @ iteration {it}] {summary}", flush=True)


class TrainingSamples(Callback):
    """Every `every_n_iterations` PPO iterations, a table of `num_samples` training rollouts to the logger.

    Rows are drawn at random (seeded by the iteration) from every rank's responses of that iteration, the same number
    per rank, so no response appears twice: prompt (the last `prompt_chars` characters), response, extracted program,
    reward, pass rate and per-test verdicts. To wandb as the table `train/samples`, or appended to
    `train_samples.jsonl` next to the CSV metrics (as `PassRateValidation` does with `val_samples.jsonl`).

    Args:
        every_n_iterations: Iterations between tables (the first after iteration `every_n_iterations`).
        num_samples: Rows per table, over all ranks.
        prompt_chars: Characters kept from the end of each prompt.
    """

    def __init__(self, every_n_iterations: int = 10, num_samples: int = 8, prompt_chars: int = 300) -> None:
        if every_n_iterations < 1 or num_samples < 1:
            raise ValueError("TrainingSamples needs every_n_iterations >= 1 and num_samples >= 1")
        self.every_n_iterations, self.num_samples, self.prompt_chars = every_n_iterations, num_samples, prompt_chars
        self._last_logged = -1

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args) -> None:
        """After an iteration whose number is a multiple of `every_n_iterations`, log its table."""
        it, last = getattr(pl_module, "ppo_iteration", 0), getattr(pl_module, "last_rollout", None)
        if last is None or it == self._last_logged or it % self.every_n_iterations:
            return  # no iteration finished (dynamic sampling still collecting), or not its turn
        self._last_logged = it
        rows = self.rows(pl_module, last, it, trainer.world_size, trainer.global_rank)
        if trainer.world_size > 1:
            gathered = [None] * trainer.world_size
            torch.distributed.all_gather_object(gathered, rows)  # every rank reaches this
            rows = [row for part in gathered for row in part]
        self._write(trainer, rows, it)

    def rows(self, pl_module: LightningModule, last: dict, it: int, world_size: int, rank: int) -> list[dict]:
        """This rank's share of the table: ceil(num_samples / world_size) random rows of its last rollout."""
        roll, results, problems, scores = last["roll"], last["results"], last["problems"], last["scores"]
        k = min(-(-self.num_samples // world_size), len(results))
        generator = torch.Generator().manual_seed(it * 1000 + rank)  # not the training RNG
        picked = sorted(torch.randperm(len(results), generator=generator)[:k].tolist())
        tokenizer = pl_module.tokenizer
        out = []
        for i in picked:
            prompt = tokenizer.decode(roll.prompt_ids[i][roll.prompt_mask[i].bool()], skip_special_tokens=True)
            out.append({"iteration": it, "problem_id": problems[i].get("problem_id"),
                        "prompt": prompt[-self.prompt_chars:], "response": roll.texts[i],
                        "program": extract_program(roll.texts[i]), "reward": float(scores[i]),
                        "pass_rate": results[i].pass_rate, "outcomes": list(results[i].outcomes)})
        return out

    @rank_zero_only
    def _write(self, trainer: Trainer, rows: list[dict], it: int) -> None:
        rows = rows[: self.num_samples]
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                columns = list(rows[0])
                logger.log_table("train/samples", columns=columns, data=[[str(r[c]) for c in columns] for r in rows])
            elif logger.log_dir:
                os.makedirs(logger.log_dir, exist_ok=True)
                with open(os.path.join(logger.log_dir, "train_samples.jsonl"), "a") as f:
                    f.writelines(json.dumps(r) + "\n" for r in rows)
