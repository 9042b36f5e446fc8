"""PassRateValidation on a run bounded by epochs: validated iterations and the sample file of the CSV logger."""

import json

import lightning as L
import pytest
from lightning.pytorch.loggers import CSVLogger

from lit_codegen.args import PPOArgs, RewardArgs, RolloutArgs
from lit_codegen.callbacks import PassRateValidation
from lit_codegen.data.datamodule import AppsDataModule
from lit_codegen.module import PPOModule


@pytest.mark.timeout(240)  # about 1 minute on 2 busy CPU cores: fail in minutes, not after a runaway schedule
def test_schedule_before_every_n_and_at_the_end_of_the_last_epoch(tmp_path):
    L.seed_everything(0)
    module = PPOModule(model="tiny", algorithm=PPOArgs(mini_batch_size=14, micro_batch_size=14),
                       rollout=RolloutArgs(n=1, max_new_tokens=8), reward=RewardArgs(workers=1, max_tests=2))
    data = AppsDataModule(template_type="base", train_batch_size=14, val_batch_size=28)  # 2 iterations per epoch
    data.connect(module.tokenizer)
    callback = PassRateValidation(every_n_iterations=3, before_training=True, at_end=True, num_samples_logged=2,
                                  train_problems=5)
    validated, validate = [], callback.validate

    def recording(trainer, pl_module):
        values = validate(trainer, pl_module)
        if values:  # an iteration already validated returns {}
            validated.append(pl_module.ppo_iteration)
            assert values["val/num_programs"] == 28  # the validation set's count: the 5 training prompts are apart
            assert 0.0 <= values["val/train_pass_rate"] <= 1.0 and "val/train_strict_accuracy" in values
        return values

    callback.validate = recording
    trainer = L.Trainer(accelerator="cpu", max_epochs=2, logger=CSVLogger(tmp_path, name=""), limit_val_batches=0,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[callback])
    trainer.fit(module, datamodule=data)
    assert module.ppo_iteration == 4
    assert validated == [0, 3, 4]  # before training, every 3rd iteration, after the last batch of the last epoch
    samples = [json.loads(line) for line in (tmp_path / "version_0" / "val_samples.jsonl").read_text().splitlines()]
    assert [s["iteration"] for s in samples] == [0, 0, 3, 3, 4, 4]
    assert all({"problem_id", "response", "pass_rate", "outcomes"} <= s.keys() for s in samples)
    rows = (tmp_path / "version_0" / "metrics.csv").read_text().splitlines()
    assert "val/train_pass_rate" in rows[0].split(",")


def test_train_problems_must_not_be_negative():
    with pytest.raises(ValueError, match="--validation.train_problems must be >= 0"):
        PassRateValidation(train_problems=-1)
