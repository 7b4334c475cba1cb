"""Presets chosen by the device: cpu on a CPU, colab-t4 or gpu on a CUDA GPU by its memory and
compute capability (GPUs are simulated: this checks the choice, not the training)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from ldm_mini import environment
from ldm_mini.cli import main
from ldm_mini.stages.ldm import load_ldm_preset

GIB = 2**30
GPUS = {  # name: (memory in GiB, compute capability, bf16)
    "Tesla T4": (15.0, (7, 5), False),
    "NVIDIA GeForce RTX 3060": (12.0, (8, 6), True),
    "NVIDIA L4": (22.5, (8, 9), True),
    "NVIDIA A100-SXM4-40GB": (39.4, (8, 0), True),
    "Tesla V100-SXM2-32GB": (31.7, (7, 0), False),
    "NVIDIA H100 80GB HBM3": (79.2, (9, 0), True),
}


@pytest.fixture
def fake_gpu(monkeypatch):
    """Pretend that one CUDA GPU of the given name is present."""

    def install(name: str) -> None:
        memory, (major, minor), bf16 = GPUS[name]
        props = SimpleNamespace(name=name, total_memory=int(memory * GIB), major=major, minor=minor)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: props)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: bf16)

    return install


@pytest.mark.parametrize(
    ("name", "preset"),
    [("Tesla T4", "colab-t4"), ("NVIDIA GeForce RTX 3060", "colab-t4"), ("NVIDIA L4", "gpu"),
     ("NVIDIA A100-SXM4-40GB", "gpu"), ("Tesla V100-SXM2-32GB", "colab-t4"),
     ("NVIDIA H100 80GB HBM3", "gpu")],
)  # fmt: skip
def test_a_gpu_gets_presets_by_memory_and_capability(fake_gpu, name, preset):
    fake_gpu(name)
    assert environment.pick_preset("cuda") == preset
    assert environment.pick_preset("cuda:0") == preset
    line = environment.describe_preset_choice("cuda")
    assert line.startswith(f"presets: {preset} (for {name}")
    assert ("bf16" if GPUS[name][2] else "fp16 with a grad scaler") in line


def test_cpu_and_mps_get_the_cpu_presets():
    assert environment.pick_preset("cpu") == "cpu"
    assert environment.pick_preset("mps") == "cpu"
    assert environment.describe_preset_choice("cpu") == "presets: cpu (device cpu)"


def test_training_commands_pick_the_presets_and_say_so(fake_gpu, capsys, tmp_path):
    fake_gpu("Tesla T4")
    argv = ["train-ldm", "--out", str(tmp_path / "run")]
    assert main([*argv, "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out) == load_ldm_preset("colab-t4")
    # an explicit preset wins, and --preset auto is the default
    assert main([*argv, "--preset", "cpu", "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out) == load_ldm_preset("cpu")
    fake_gpu("NVIDIA H100 80GB HBM3")
    assert main([*argv, "--preset", "auto", "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out) == load_ldm_preset("gpu")


def test_the_gpu_presets_train_in_mixed_precision():
    from ldm_mini.configs import load_preset
    from ldm_mini.stages.sr import load_sr_preset

    for preset in ("colab-t4", "gpu"):
        for config in (load_preset("autoencoder", preset), load_ldm_preset(preset),
                       load_sr_preset(preset)):  # fmt: skip
            # auto: bf16 where the GPU has it, else fp16 with a grad scaler (train.py)
            assert config["train"]["precision"] == "auto"
            assert config["train"]["device"] == "auto"
