"""Text-conditional latent diffusion: tau_theta trained jointly, guidance, padding, bad prompts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ldm_mini.checkpoints import load_checkpoint
from ldm_mini.configs import apply_overrides
from ldm_mini.pipelines import load_ldm
from ldm_mini.stages.ldm import load_ldm_preset, make_stage, train_ldm

pytestmark = pytest.mark.usefixtures("one_thread")

TEXT = {
    "data.dataset": "shapes",
    "data.limit": 32,
    "first_stage.checkpoint": "shipped:emoji_kl_f4",
    "condition.kind": "text",
    "condition.text_dim": 16,
    "condition.text_depth": 1,
    "condition.text_heads": 2,
    "condition.max_length": 12,
    "train.steps": 4,
    "train.checkpoint_every": 2,
    "train.sample_every": 2,
    # constant: a 2-step run is then the first half of the 4-step one (resume test)
    "train.lr_schedule": "constant",
}


def text_config(**sets) -> dict:
    values = {**TEXT, **sets}
    overrides = [f"{key}={json.dumps(value)}" for key, value in values.items()]
    return apply_overrides(load_ldm_preset("tiny"), overrides)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("text") / "run"
    train_ldm(text_config(), out, progress=False)
    return out


def _draw(ldm, prompts, guidance=1.0, seed=0):
    noise = torch.randn(len(prompts), 8, 8, 8, generator=torch.Generator().manual_seed(seed))
    return ldm.sample(len(prompts), (8, 8), steps=3, prompts=prompts, guidance=guidance,
                      noise=noise)[0]  # fmt: skip


def test_text_encoder_is_trained_jointly_and_saved_with_its_ema(trained: Path):
    checkpoint = load_checkpoint(trained)
    assert checkpoint.config["condition"]["kind"] == "text"
    vocabulary = checkpoint.config["tokenizer"]["vocabulary"]
    assert {"red", "circle", "above", "left"} <= set(vocabulary)
    names = set(checkpoint.model_state)
    assert any(k.startswith("condition_encoder.") for k in names)
    assert any(k.startswith("condition_encoder.") for k in checkpoint.ema_state)
    # the encoder moved away from its initialisation: it gets gradients
    stage, _, _ = make_stage(text_config())
    fresh = stage.ldm.condition_encoder.state_dict()
    key = "token_embedding.weight"
    assert not torch.equal(checkpoint.model_state[f"condition_encoder.{key}"], fresh[key])


def test_resume_equals_the_uninterrupted_text_run(tmp_path: Path, trained: Path):
    train_ldm(text_config(**{"train.steps": 2}), tmp_path / "resumed", progress=False)
    train_ldm(text_config(), tmp_path / "resumed", progress=False)
    a, b = load_checkpoint(trained), load_checkpoint(tmp_path / "resumed")
    for name, tensor in a.model_state.items():
        assert torch.equal(tensor, b.model_state[name]), name
    for name, tensor in a.ema_state.items():
        assert torch.equal(tensor, b.ema_state[name]), name


def test_guidance_limits_same_seed_and_the_empty_prompt(trained: Path):
    ldm, _ = load_ldm(trained)
    prompts = ["a red circle above a blue square", "an orange triangle"]
    conditional = _draw(ldm, prompts)
    assert torch.equal(conditional, _draw(ldm, prompts))  # same seed and prompt, same image
    assert not torch.equal(conditional, _draw(ldm, prompts, seed=1))
    # w = 0 is the unconditional model: the empty prompt with w = 1
    torch.testing.assert_close(_draw(ldm, prompts, guidance=0.0), _draw(ldm, ["", ""]))
    # w = 1 is the plain conditional prediction (no unconditional call)
    assert not torch.allclose(conditional, _draw(ldm, ["", ""]))
    guided = _draw(ldm, prompts, guidance=3.0)
    assert guided.shape == conditional.shape and not torch.allclose(guided, conditional)


def test_padding_changes_nothing_in_the_unet(trained: Path):
    ldm, _ = load_ldm(trained)
    condition = ldm.encode_condition(["a red circle"])
    mask = condition["key_padding_mask"]
    garbage = condition["context"].clone()
    garbage[~mask] = torch.randn(int((~mask).sum()), garbage.shape[-1]) * 10
    z = torch.randn(1, 8, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([500])
    with torch.no_grad():
        clean = ldm.unet(z, t, **condition)
        noisy = ldm.unet(z, t, context=garbage, key_padding_mask=mask)
        leaky = ldm.unet(z, t, context=garbage, key_padding_mask=torch.ones_like(mask))
    torch.testing.assert_close(noisy, clean)
    assert not torch.allclose(leaky, clean)  # without the mask the garbage would count


def test_caption_dropout_rate_is_measured_within_tolerance(trained: Path):
    ldm, _ = load_ldm(trained)
    captions = ["a red circle"] * 20_000
    generator = torch.Generator().manual_seed(0)
    dropped = ldm.captions_for_training(captions, len(captions), 0.1, generator)
    rate = sum(c == "" for c in dropped) / len(captions)
    assert abs(rate - 0.1) < 0.006  # 3 standard deviations of a binomial mean at n = 20,000
    assert ldm.captions_for_training(captions[:5], 5, 0.0) == captions[:5]
    assert ldm.captions_for_training(captions[:5], 5, 1.0, generator) == [""] * 5


def test_bad_prompts_are_clear(trained: Path):
    ldm, _ = load_ldm(trained)
    with pytest.raises(ValueError, match=r"outside the vocabulary: \['crimson'\]"):
        _draw(ldm, ["a crimson circle"])
    long_prompt = "a red circle above a blue square " * 3
    with pytest.warns(UserWarning, match="keeping the first 11"):
        image = _draw(ldm, [long_prompt])
    assert image.shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="pass prompts, a list of 2 strings"):
        ldm.sample(2, (8, 8), steps=2, prompts=["a red circle"])
    with pytest.raises(ValueError, match="pass prompts, not labels"):
        ldm.sample(1, (8, 8), steps=2, labels=torch.tensor([0]), prompts=["a red circle"])
    with pytest.raises(ValueError, match="pass 2 captions"):
        ldm.training_loss(torch.zeros(2, 8, 8, 8), captions=["a red circle"])


def test_text_needs_captions_and_checks_its_settings(trained: Path, tmp_path: Path):
    from PIL import Image

    folder = tmp_path / "uncaptioned"
    folder.mkdir()
    for index in range(3):
        Image.new("RGB", (32, 32), (40 * index, 0, 0)).save(folder / f"{index}.png")
    with pytest.raises(ValueError, match="has no captions"):
        make_stage(text_config(**{"data.dataset": str(folder), "data.limit": None}))
    with pytest.raises(ValueError, match="unknown_words must be one of"):
        make_stage(text_config(**{"condition.unknown_words": "ignore"}))


def test_the_readme_text_setup_v_prediction_with_attention_at_both_levels(tmp_path: Path):
    """The README trains text models with v-prediction and cross-attention at levels [0, 1]:
    the run stores both, loads, and samples through the v -> (x0, eps) conversion."""
    out = tmp_path / "v"
    config = text_config(**{"diffusion.parameterization": "v", "model.attention_levels": [0, 1],
                            "train.steps": 2})  # fmt: skip
    train_ldm(config, out, progress=False)
    ldm, loaded = load_ldm(out)
    assert ldm.schedule.parameterization == "v" and loaded["diffusion"]["parameterization"] == "v"
    assert list(loaded["model"]["attention_levels"]) == [0, 1]
    images = _draw(ldm, ["a red circle", "a blue square below a green circle"], guidance=3.0)
    assert images.shape == (2, 3, 32, 32) and torch.isfinite(images).all()
    # the loss target is v = sqrt(abar) eps - sqrt(1 - abar) z0, not eps
    z0 = torch.randn(2, 8, 8, 8, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(2, 8, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([10, 900])
    abar = ldm.schedule.alphas_cumprod[t].float().view(-1, 1, 1, 1)
    expected_v = abar.sqrt() * noise - (1 - abar).sqrt() * z0
    torch.testing.assert_close(ldm.schedule.target(z0, noise, t), expected_v)


def test_a_text_warm_start_loads_the_unet_and_the_encoder_and_refuses_other_words(
    trained: Path, tmp_path: Path
):
    source, _ = load_ldm(trained)  # the EMA weights of both parts
    stage, _, _ = make_stage(text_config(**{"init.checkpoint": str(trained)}))
    for part in ("unet", "condition_encoder"):
        ours = getattr(stage.ldm, part).state_dict()
        for name, tensor in getattr(source, part).state_dict().items():
            assert torch.equal(ours[name], tensor), f"{part}.{name}"
    fresh, _, _ = make_stage(text_config())
    assert not torch.equal(
        fresh.ldm.condition_encoder.state_dict()["token_embedding.weight"],
        source.condition_encoder.state_dict()["token_embedding.weight"],
    )
    # training goes on from there
    train_ldm(text_config(**{"init.checkpoint": str(trained), "train.steps": 2}),
              tmp_path / "warm", progress=False)  # fmt: skip
    assert load_checkpoint(tmp_path / "warm").config["init"]["checkpoint"] == str(trained)
    # another vocabulary (other captions) or other encoder settings would mean other weights
    with pytest.raises(ValueError, match="another vocabulary"):
        make_stage(text_config(**{"init.checkpoint": str(trained), "data.dataset": "emoji"}))
    with pytest.raises(ValueError, match="another text encoder: text_depth 1 there vs 2 here"):
        make_stage(text_config(**{"init.checkpoint": str(trained), "condition.text_depth": 2}))
