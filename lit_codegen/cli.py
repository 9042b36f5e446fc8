"""The `lit-codegen` command: LightningCLI with the model and data classes chosen in the YAML.

    lit-codegen fit --config configs/demo_cpu.yaml
    lit-codegen validate --config configs/demo_cpu.yaml --ckpt_path last
    lit-codegen fit --config configs/demo_cpu.yaml --print_config

Any LightningModule / LightningDataModule can be named with `class_path`; ours are `lit_codegen.module.PPOModule`,
`lit_codegen.sft.SFTModule`, `lit_codegen.data.datamodule.AppsDataModule` and `SFTDataModule`. The tokenizer is handed
from the model to the data module explicitly (`datamodule.connect(tokenizer)`) right after both are built.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

# Sandbox workers score programs while the forward passes run; spinning OpenMP threads would starve them (measured:
# HF generate 7-16 s instead of 0.8-1.4 s on 2 busy cores). Set before torch starts its thread pool.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from jsonargparse import set_parsing_settings
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

from lit_codegen.args import check_lora_args, check_ppo_args, check_reward_template
from lit_codegen.callbacks import PassRateValidation
from lit_codegen.data.datamodule import check_sizes
from lit_codegen.parallel import parallel_sizes

# Field docstrings (`"""..."""` under a dataclass field / Args: sections) become `--help` text.
set_parsing_settings(docstring_parse_attribute_docstrings=True)


ROOT_DIR = "${trainer.default_root_dir}"
"""Stands for `trainer.default_root_dir` (also when given on the command line) in the string arguments of loggers
and callbacks, e.g. `save_dir: ${trainer.default_root_dir}` or `dirpath: ${trainer.default_root_dir}/checkpoints`."""


class LitCodegenCLI(LightningCLI):
    """LightningCLI that connects the data module to the model's tokenizer and saves the resolved config.

    The validation schedule is its own config group, `validation:` (`lit_codegen.callbacks.PassRateValidation`), so
    its fields can be set from the command line like any other (`--validation.every_n_iterations 50`).
    """

    def add_arguments_to_parser(self, parser) -> None:
        """Add the `validation` group (a PassRateValidation callback) and check PPO settings at parse time."""
        parser.add_lightning_class_args(PassRateValidation, "validation")

    def before_instantiate_classes(self) -> None:
        """Check settings that only fail together or deep inside a run: one parse error instead of a traceback."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        try:
            if getattr(config.model, "class_path", None) == "lit_codegen.module.PPOModule":
                model = config.model.init_args
                check_ppo_args(model.algorithm, model.rollout, model.reward)
                check_lora_args(model.lora)
                check_reward_template(model.reward, getattr(getattr(config.data, "init_args", None),
                                                            "template_type", None))
            if str(getattr(config.data, "class_path", "")).startswith("lit_codegen.data.datamodule."):
                sizes = ("max_prompt_length", "max_length", "train_batch_size", "val_batch_size", "batch_size",
                         "num_workers")
                check_sizes(**{k: v for k, v in vars(config.data.init_args).items() if k in sizes})
            _check_world_size(config.trainer)
        except ValueError as exc:
            self.parser.error(str(exc))

    def before_validate(self) -> None:
        """Let `validate` score the whole validation set.

        `validate` is Lightning's validation loop, which the configs switch off (`limit_val_batches: 0`) because
        during `fit` validation runs in PassRateValidation, on the PPO-iteration schedule.
        """
        if self.trainer.limit_val_batches == 0:
            self.trainer.limit_val_batches = 1.0
        config = self.config[self.subcommand]
        if config.get("ckpt_path") == "last":  # Lightning only warns, then scores the untrained model
            folders = [Path(cb.dirpath) for cb in self.trainer.checkpoint_callbacks if getattr(cb, "dirpath", None)]
            if folders and not any(any(folder.glob("last*.ckpt")) for folder in folders):
                self.parser.error(f"--ckpt_path last: no last checkpoint in {', '.join(map(str, folders))}; give "
                                  "--ckpt_path PATH of the checkpoint to score")

    def instantiate_classes(self) -> None:
        """Build model, data module and trainer, then hand the tokenizer to the data module.

        The classes are built from a copy of the config with `${trainer.default_root_dir}` resolved; the config saved
        in the run folder keeps the placeholder, so that reusing it with another `--trainer.default_root_dir` writes
        there and not into this run's folder.
        """
        as_given = self.config
        self.config = _root_dir_resolved(as_given, self.subcommand)
        try:
            super().instantiate_classes()
        finally:
            self.config = as_given
        for callback in self.trainer.callbacks:
            if isinstance(callback, SaveConfigCallback):
                callback.config = as_given[self.subcommand] if self.subcommand else as_given
        connect = getattr(self.datamodule, "connect", None)
        tokenizer = getattr(self.model, "tokenizer", None)
        if callable(connect) and tokenizer is not None:
            connect(tokenizer)


def _check_world_size(trainer_cfg) -> None:
    """ModelParallelStrategy's data x tensor parallel sizes must equal devices x nodes (else every rank fails later)."""
    strategy = trainer_cfg.strategy
    if not str(getattr(strategy, "class_path", "")).endswith("ModelParallelStrategy"):
        return
    devices, nodes = trainer_cfg.devices, trainer_cfg.num_nodes
    if not all(isinstance(v, int) or (isinstance(v, str) and v.isdigit()) for v in (devices, nodes)):
        return  # "auto", a device list: Lightning works it out
    sizes = [strategy.init_args.data_parallel_size, strategy.init_args.tensor_parallel_size]
    parallel_sizes(*(v if v == "auto" else int(v) for v in sizes), int(devices), int(nodes))


def _root_dir_resolved(config, subcommand: str | None):
    """A copy of `config`, `${trainer.default_root_dir}` replaced in the string init arguments of loggers/callbacks."""
    config = config.clone()
    trainer_cfg = (config[subcommand] if subcommand else config).trainer
    root = str(trainer_cfg.default_root_dir or ".")
    for group in (trainer_cfg.logger, trainer_cfg.callbacks):
        for item in group if isinstance(group, list) else [group]:
            init_args = getattr(item, "init_args", None)
            for key, value in (vars(init_args).items() if init_args is not None else ()):
                if isinstance(value, str) and ROOT_DIR in value:
                    setattr(init_args, key, value.replace(ROOT_DIR, root))
    return config


def main(args: list[str] | None = None) -> None:
    """Entry point of the `lit-codegen` console script (returns None: the console wrapper exits with status 0)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Lightning warns at every periodic save under manual optimization that the checkpoint holds the weights after
    # optimizer.step(), with a code sample for saving them before: after the step is what exact resume needs (the
    # checkpoint of iteration N resumes at N + 1), so the warning and its sample do not apply here
    warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")
    LitCodegenCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"allow_abbrev": False},  # a misspelt flag that happens to be a prefix is an error, not a guess
        args=args,
        auto_configure_optimizers=False,
    )


if __name__ == "__main__":
    main()
