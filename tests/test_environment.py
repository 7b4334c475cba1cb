"""The environment check behind notebook 00 and `ldm-mini env`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ldm_mini import environment


def test_quick_mode_follows_the_variable(monkeypatch):
    monkeypatch.setenv("LDM_MINI_QUICK", "1")
    assert environment.quick_mode()
    monkeypatch.setenv("LDM_MINI_QUICK", "0")
    assert not environment.quick_mode()
    monkeypatch.delenv("LDM_MINI_QUICK")
    assert not environment.quick_mode()


def test_pick_device_refuses_what_is_not_there():
    assert environment.pick_device() in ("cpu", "cuda", "mps")
    assert environment.pick_device("cpu") == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA GPU"):
            environment.pick_device("cuda")


def test_report_says_what_the_course_falls_back_to(monkeypatch):
    monkeypatch.setattr(environment, "reachable", lambda url, timeout=3.0: (False, "offline"))
    monkeypatch.setattr(environment, "lpips_backbone_cached", lambda net="vgg": False)
    info = environment.report()
    assert info["hub_reachable"] is False and info["datasets_source"] == "bundled (offline)"
    assert info["perceptual_backbone_presets"] == ["efficientnet-lite0"]
    assert info["perceptual_backbone"] == "efficientnet-lite0"
    assert info["perceptual_backbone_auto"] == "efficientnet-lite0 (offline)"
    text = environment.format_report(info)
    assert "Hugging Face Hub reachable: False (offline)" in text
    assert "=> perceptual loss backbone of the autoencoder presets: efficientnet-lite0\n" in text
    assert "=> with --set loss.perceptual_backbone=auto: efficientnet-lite0 (offline)" in text
    monkeypatch.setattr(environment, "reachable", lambda url, timeout=3.0: (True, ""))
    info = environment.report()
    assert info["perceptual_backbone"] == "efficientnet-lite0", "never downloaded by default"
    assert "--set loss.allow_download=true" in info["perceptual_backbone_auto"]
    assert info["perceptual_backbone_auto"].startswith("efficientnet-lite0 (LPIPS-VGG")


def test_cached_lpips_weights_change_auto_but_not_the_presets(monkeypatch):
    """The bug this guards against: cached VGG16 weights made the report say lpips-vgg, though
    every preset trains with efficientnet-lite0."""
    monkeypatch.setattr(environment, "lpips_backbone_cached", lambda net="vgg": True)
    info = environment.report(check_network=False)
    assert info["lpips_backbone_cached"] is True
    assert info["perceptual_backbone"] == "efficientnet-lite0"
    assert info["perceptual_backbone_auto"] == "lpips-vgg"
    text = environment.format_report(info)
    assert "=> with --set loss.perceptual_backbone=auto: lpips-vgg" in text


def test_preset_backbones_are_read_from_the_presets(monkeypatch):
    from ldm_mini.configs import available_presets

    settings = environment.preset_perceptual_backbones()
    assert sorted(settings) == available_presets("autoencoder")
    assert all(s == {"perceptual_backbone": "efficientnet-lite0", "allow_download": False}
               for s in settings.values())  # fmt: skip
    # a preset that said "auto" would train with what auto resolves to, listed beside the others
    monkeypatch.setattr(environment, "lpips_backbone_cached", lambda net="vgg": False)
    mixed = {**settings, "gpu": {"perceptual_backbone": "auto", "allow_download": True}}
    monkeypatch.setattr(environment, "preset_perceptual_backbones", lambda: mixed)
    info = environment.report(check_network=False)
    assert info["perceptual_backbone_presets"] == ["auto", "efficientnet-lite0"]
    assert info["perceptual_backbone"] == "efficientnet-lite0, lpips-vgg"
    assert info["perceptual_backbone_auto"] == "efficientnet-lite0 (LPIPS-VGG not cached)"


def test_scratch_folder_is_removed_when_the_process_exits(tmp_path):
    """A notebook's runs go in a scratch folder that its kernel removes on exit, files and all."""
    script = (
        "from ldm_mini.environment import scratch_folder\n"
        "folder = scratch_folder('nb06_ldm_')\n"
        "(folder / 'run').mkdir()\n"
        "(folder / 'run' / 'weights.bin').write_bytes(b'x' * 1000)\n"
        "print(folder)\n"
    )
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                          check=True)
    folder = Path(done.stdout.strip())
    assert folder.parent == tmp_path / environment.SCRATCH_ROOT_NAME
    assert folder.name.startswith("nb06_ldm-pid")
    assert not folder.exists()
    assert list(folder.parent.iterdir()) == []


@pytest.mark.skipif(os.name != "posix", reason="stale folders are found by POSIX process ids")
def test_a_killed_kernels_folder_is_removed_by_the_next_one(tmp_path, monkeypatch):
    """Test runners kill kernels (nbval: shutdown now=True), so exit handlers never run: the next
    scratch folder removes those of dead processes and keeps those of live ones."""
    script = (
        "import os, signal\n"
        "from ldm_mini.environment import scratch_folder\n"
        "folder = scratch_folder('ldm-mini-01-')\n"
        "(folder / 'weights.bin').write_bytes(b'x' * 1000)\n"
        "print(folder, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert done.returncode == -9
    dead = Path(done.stdout.strip())
    assert (dead / "weights.bin").exists()  # killed: nothing ran at exit

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(environment.tempfile, "tempdir", None)  # re-read TMPDIR
    live = environment.scratch_folder("ldm-mini-02-")  # this process: alive
    assert not dead.exists()
    assert live.is_dir() and live.parent == dead.parent
    assert environment.remove_stale_scratch_folders(live.parent) == []
    assert live.is_dir()


def test_notebooks_write_their_runs_in_scratch_folders():
    """No notebook leaves a folder in the temporary directory behind (each run of notebook 01
    used to leave 134 MB of checkpoints in /tmp)."""
    leaking = []
    for path in sorted((Path(__file__).parents[1] / "notebooks").glob("*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        code = "\n".join("".join(cell["source"]) for cell in cells if cell["cell_type"] == "code")
        if "mkdtemp(" in code:
            leaking.append(path.name)
    assert leaking == []
