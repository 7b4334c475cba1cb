"""The training engine and the checkpoint format, on a tiny stage (no autoencoder needed)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from ldm_mini.checkpoints import (
    CheckpointError,
    load_checkpoint,
    read_checkpoint_config,
    save_checkpoint,
)
from ldm_mini.train import (
    TrainConfig,
    Trainer,
    TrainingDivergedError,
    TrainingStage,
    batch_indices,
    resolve_precision,
)


class VectorDataset(torch.utils.data.Dataset):
    def __init__(self, count: int = 40):
        generator = torch.Generator().manual_seed(0)
        self.x = torch.randn(count, 6, generator=generator)
        self.y = self.x @ torch.arange(6.0) + 0.1 * torch.randn(count, generator=generator)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, index):
        return {"x": self.x[index], "y": self.y[index]}


class RegressionStage(TrainingStage):
    """Two optimizers and dropout, so RNG, optimizer state and order all matter."""

    name = "toy"

    def __init__(self, nan_at: int | None = None):
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(6, 16), nn.Dropout(0.2), nn.ReLU(), nn.Linear(16, 1))
        self.critic = nn.Linear(6, 1)
        self.nan_at = nan_at
        self._optimizers = {
            "net": torch.optim.Adam(self.net.parameters(), 1e-2),
            "critic": torch.optim.SGD(self.critic.parameters(), 1e-2, momentum=0.9),
        }

    def modules(self):
        return {"net": self.net, "critic": self.critic}

    def optimizers(self):
        return self._optimizers

    def loss(self, optimizer, batch, step, scratch):
        if optimizer == "net":
            prediction = self.net(batch["x"]).squeeze(1)
            scratch["residual"] = (prediction - batch["y"]).detach()
            loss = ((prediction - batch["y"]) ** 2).mean()
            if self.nan_at is not None and step >= self.nan_at:
                loss = loss * float("nan")
            return loss, {"loss": float(loss.detach())}
        loss = ((self.critic(batch["x"]).squeeze(1) - scratch["residual"]) ** 2).mean()
        return loss, {"critic_loss": float(loss.detach())}

    def checkpoint_config(self):
        return {"model": {"hidden": 16}, "data": {"count": 40}}

    def inference_state(self):
        return self.net.state_dict()


def _config(steps: int, **kw) -> TrainConfig:
    values = dict(steps=steps, batch_size=8, log_every=1, sample_every=1000, checkpoint_every=1000)
    return TrainConfig(**{**values, **kw})


def _losses(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_batch_indices_cover_each_epoch_once_and_are_reproducible():
    seen = []
    for step in range(1, 6):  # 5 steps x 8 = 40 = one epoch of 40 items
        indices, epoch = batch_indices(step, 8, 40, seed=3)
        assert epoch == 0
        seen += indices
    assert sorted(seen) == list(range(40))
    assert batch_indices(2, 8, 40, 3) == batch_indices(2, 8, 40, 3)
    assert batch_indices(2, 8, 40, 3)[0] != batch_indices(2, 8, 40, 4)[0]
    crossing, epoch = batch_indices(3, 16, 40, seed=3)  # items 32..47 span epochs 0 and 1
    assert epoch == 0
    assert crossing[:8] == batch_indices(5, 8, 40, seed=3)[0]
    assert crossing[8:] == batch_indices(6, 8, 40, seed=3)[0]
    assert batch_indices(6, 8, 40, seed=3)[1] == 1


def test_resume_reproduces_the_uninterrupted_run(tmp_path: Path):
    dataset = VectorDataset()
    straight = RegressionStage()
    Trainer(straight, dataset, _config(12), tmp_path / "a", progress=False).fit()

    first = RegressionStage()
    Trainer(first, dataset, _config(6), tmp_path / "b", progress=False).fit()
    second = RegressionStage()  # a fresh process would rebuild everything from scratch
    resumed = Trainer(second, dataset, _config(12), tmp_path / "b", progress=False)
    assert resumed.step == 6
    resumed.fit()

    for name, tensor in straight.net.state_dict().items():
        assert torch.equal(tensor, second.net.state_dict()[name]), name
    assert torch.equal(straight.critic.weight, second.critic.weight)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(_losses(tmp_path / "a")) == strip(_losses(tmp_path / "b"))
    assert load_checkpoint(tmp_path / "b").step == 12


def test_a_nan_loss_stops_with_the_step_and_saves_last_good(tmp_path: Path):
    stage = RegressionStage(nan_at=4)
    trainer = Trainer(stage, VectorDataset(), _config(10), tmp_path, progress=False)
    with pytest.raises(TrainingDivergedError, match="loss is nan at step 4") as info:
        trainer.fit()
    assert "last-good" in str(info.value)
    saved = load_checkpoint(tmp_path / "last-good", expected_stage="toy")
    assert saved.step == 3
    assert all(torch.isfinite(t).all() for t in saved.model_state.values())
    for name, tensor in stage.net.state_dict().items():
        assert torch.equal(tensor.cpu(), saved.model_state[name])


def test_resume_refuses_a_run_with_another_model(tmp_path: Path):
    Trainer(RegressionStage(), VectorDataset(), _config(2), tmp_path, progress=False).fit()
    other = RegressionStage()
    other.checkpoint_config = lambda: {"model": {"hidden": 32}, "data": {"count": 40}}
    with pytest.raises(CheckpointError, match="another model configuration"):
        Trainer(other, VectorDataset(), _config(4), tmp_path, progress=False)


def test_warmup_scales_the_learning_rate(tmp_path: Path):
    stage = RegressionStage()
    trainer = Trainer(stage, VectorDataset(), _config(3, warmup_steps=4), tmp_path, progress=False)
    trainer.fit()
    assert [row["lr_factor"] for row in _losses(tmp_path)] == [0.25, 0.5, 0.75]
    assert stage.optimizers()["net"].param_groups[0]["lr"] == pytest.approx(0.75e-2)


def test_cosine_schedule_after_warmup(tmp_path: Path):
    stage = RegressionStage()
    config = _config(6, warmup_steps=2, lr_schedule="cosine", min_lr_ratio=0.1)
    Trainer(stage, VectorDataset(), config, tmp_path, progress=False).fit()
    factors = [row["lr_factor"] for row in _losses(tmp_path)]
    # warmup 0.5, 1.0; then 0.1 + 0.9 * (1 + cos(pi * k / 4)) / 2 for k = 1..4
    expected = [0.5, 1.0] + [0.1 + 0.45 * (1 + math.cos(math.pi * k / 4)) for k in (1, 2, 3, 4)]
    assert factors == pytest.approx(expected)
    assert factors[-1] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="lr_schedule must be one of"):
        TrainConfig(lr_schedule="step")
    with pytest.raises(ValueError, match="min_lr_ratio"):
        TrainConfig(min_lr_ratio=1.5)


class FakeClock:
    """time.perf_counter for the engine: advanced by hand, so budgets are deterministic."""

    def __init__(self) -> None:
        self.now = 1000.0

    def perf_counter(self) -> float:
        return self.now


class TimedStage(RegressionStage):
    """Each step takes 6 s of (fake) training time."""

    def __init__(self, clock: FakeClock):
        super().__init__()
        self.clock = clock

    def loss(self, optimizer, batch, step, scratch):
        if optimizer == "net":
            self.clock.now += 6.0
        return super().loss(optimizer, batch, step, scratch)


def test_a_wall_clock_budget_ends_training_and_excludes_the_callback(tmp_path, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr("ldm_mini.train.time", clock)
    seen = []

    def callback(trainer):
        seen.append((trainer.step, trainer.seconds))
        clock.now += 100.0  # an evaluation: not training time

    config = _config(100, lr_schedule="cosine", max_minutes=0.5, log_every=1)
    trainer = Trainer(TimedStage(clock), VectorDataset(), config, tmp_path, progress=False)
    trainer.fit(callback=callback)
    # 30 s of training at 6 s a step: 5 steps, whatever the callback cost
    assert trainer.step == 5 and trainer.seconds == pytest.approx(30.0)
    assert seen == [(s, pytest.approx(6.0 * s)) for s in range(1, 6)]
    assert load_checkpoint(tmp_path, with_trainer_state=True).step == 5
    # the cosine decays over the budget: progress max(s / 100, 6 (s - 1) / 30) at step s
    factors = [row["lr_factor"] for row in _losses(tmp_path)]
    progress = [max(s / 100, 6 * (s - 1) / 30) for s in range(1, 6)]
    assert factors == pytest.approx([0.5 * (1 + math.cos(math.pi * p)) for p in progress])
    # a finished budget trains no more; a larger one resumes from step 5
    assert Trainer(TimedStage(clock), VectorDataset(), config, tmp_path, progress=False).fit()[
        "note"
    ] == "already complete"
    longer = _config(100, lr_schedule="cosine", max_minutes=1.0, log_every=1)
    resumed = Trainer(TimedStage(clock), VectorDataset(), longer, tmp_path, progress=False)
    resumed.fit()
    assert resumed.step == 10 and resumed.seconds == pytest.approx(60.0)
    with pytest.raises(ValueError, match="max_minutes"):
        TrainConfig(max_minutes=0)


def test_precision_choice():
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ValueError, match="fp16 needs a CUDA GPU"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(ValueError, match="precision must be one of"):
        TrainConfig(precision="fp8")
    with pytest.raises(ValueError, match=r"unknown train key\(s\) \['stepz'\]"):
        TrainConfig.from_dict({"stepz": 3})


def _save(path: Path, stage: str = "toy") -> dict[str, torch.Tensor]:
    state = {"weight": torch.randn(4, 3), "bias": torch.arange(3.0)}
    save_checkpoint(path, stage=stage, config={"model": {"a": 1}}, model_state=state,
                    trainer_state={"step": 5, "rng": torch.get_rng_state()}, step=5)  # fmt: skip
    return state


def test_checkpoint_round_trip_is_bitwise(tmp_path: Path):
    state = _save(tmp_path / "ckpt")
    loaded = load_checkpoint(tmp_path / "ckpt", expected_stage="toy", with_trainer_state=True)
    assert loaded.step == 5 and loaded.config["model"] == {"a": 1}
    assert all(torch.equal(state[k], loaded.model_state[k]) for k in state)
    assert loaded.trainer_state["step"] == 5
    # saving again replaces the folder atomically and leaves no temporary folders behind
    _save(tmp_path / "ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_damaged_checkpoints_are_named(tmp_path: Path):
    _save(tmp_path / "ckpt")
    model = tmp_path / "ckpt" / "model.safetensors"
    data = model.read_bytes()
    model.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors is corrupted or truncated"):
        load_checkpoint(tmp_path / "ckpt")
    _save(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "config.json").write_text('{"stage": ')
    with pytest.raises(CheckpointError, match="config.json is unreadable"):
        read_checkpoint_config(tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="is not a checkpoint"):
        load_checkpoint(tmp_path / "empty")


def test_a_checkpoint_of_another_stage_is_refused(tmp_path: Path):
    _save(tmp_path / "ckpt", stage="ldm")
    with pytest.raises(CheckpointError, match="holds a 'ldm' checkpoint, but a 'autoencoder'"):
        load_checkpoint(tmp_path / "ckpt", expected_stage="autoencoder")


def test_shipped_style_checkpoints_cannot_resume(tmp_path: Path):
    save_checkpoint(tmp_path / "ckpt", stage="toy", config={}, model_state={"w": torch.ones(2)})
    with pytest.raises(CheckpointError, match="cannot be resumed"):
        load_checkpoint(tmp_path / "ckpt", with_trainer_state=True)


def test_a_save_killed_between_its_renames_is_recovered(tmp_path: Path, monkeypatch):
    state = {"w": torch.arange(6.0)}
    save_checkpoint(tmp_path / "ckpt", stage="toy", config={"v": 1}, model_state=state, step=1)
    original_rename = Path.rename
    calls = []

    def crash_on_second_rename(self, target):
        calls.append(target)
        if len(calls) == 2:  # the old folder is aside, the new one not yet in place
            raise KeyboardInterrupt("killed")
        return original_rename(self, target)

    monkeypatch.setattr(Path, "rename", crash_on_second_rename)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "ckpt", stage="toy", config={"v": 2}, model_state=state, step=2)
    monkeypatch.setattr(Path, "rename", original_rename)
    assert not (tmp_path / "ckpt").exists()
    # loading puts the previous checkpoint back
    checkpoint = load_checkpoint(tmp_path / "ckpt")
    assert checkpoint.step == 1 and checkpoint.config["v"] == 1


KILL_SCRIPT = """
import sys, torch
from ldm_mini.checkpoints import save_checkpoint
state = {"w": torch.randn(1_000_000)}
step = 0
while True:
    step += 1
    save_checkpoint(sys.argv[1], stage="toy", config={"v": step}, model_state=state, step=step)
    print(step, flush=True)
"""


def test_killing_the_process_during_saves_leaves_a_loadable_checkpoint(tmp_path: Path):
    import signal
    import subprocess
    import sys
    import time

    target = tmp_path / "ckpt"
    for delay in (0.7, 1.0, 1.3):  # kills at different points of the save loop
        process = subprocess.Popen(
            [sys.executable, "-c", KILL_SCRIPT, str(target)], stdout=subprocess.PIPE, text=True
        )
        process.stdout.readline()  # at least one checkpoint is complete
        time.sleep(delay - 0.5)
        process.send_signal(signal.SIGKILL)
        process.wait()
        checkpoint = load_checkpoint(target)  # complete, verified by sha256
        assert checkpoint.step >= 1 and checkpoint.model_state["w"].shape == (1_000_000,)
