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
