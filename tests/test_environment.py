"""The environment check behind notebook 00 and `ldm-mini env`."""

from __future__ import annotations

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
    assert info["perceptual_backbone"] == "efficientnet-lite0 (offline)"
    text = environment.format_report(info)
    assert "Hugging Face Hub reachable: False (offline)" in text
    monkeypatch.setattr(environment, "reachable", lambda url, timeout=3.0: (True, ""))
    info = environment.report()
    assert "opt-in" in info["perceptual_backbone"], "reachable weights are never used by default"
    monkeypatch.setattr(environment, "lpips_backbone_cached", lambda net="vgg": True)
    assert environment.report()["perceptual_backbone"] == "lpips-vgg"
