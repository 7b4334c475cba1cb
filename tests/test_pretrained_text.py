"""The frozen pretrained text encoder (MiniLM) as tau_theta, on a tiny random BERT built here,
and on the real packaged MiniLM when it is installed (the optional extra)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers", reason="the dev extra installs transformers")

from ldm_mini.checkpoints import (
    export_ema_checkpoint,  # noqa: E402
    load_checkpoint,  # noqa: E402
)
from ldm_mini.configs import apply_overrides  # noqa: E402
from ldm_mini.pipelines import load_ldm
from ldm_mini.pretrained_text import (  # noqa: E402
    MINILM_PACKAGE,
    MINILM_SHA256,
    PretrainedTextEncoder,
    file_sha256,
    locate_minilm,
)
from ldm_mini.stages.ldm import load_ldm_preset, train_ldm  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

WORDS = ["a", "an", "red", "green", "blue", "yellow", "purple", "orange", "circle", "square",
         "triangle", "above", "below", "to", "the", "left", "right", "of",
         "cr", "##im", "##son"]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    """A 2-layer, 32-dim BERT with random weights and a WordPiece vocabulary, saved as a
    model folder (safetensors) like the packaged MiniLM's."""
    from transformers import BertConfig, BertModel, BertTokenizer

    folder = tmp_path_factory.mktemp("tiny_bert")
    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    BertTokenizer(vocab={word: i for i, word in enumerate(vocabulary)}).save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(WORDS) + 5, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=32)  # fmt: skip
    BertModel(config).save_pretrained(folder, safe_serialization=True)
    return folder


def test_tokens_mask_null_condition_and_frozen(tiny_bert: Path):
    encoder = PretrainedTextEncoder(tiny_bert, max_length=12)
    assert encoder.dim == 32
    tokens, mask = encoder(["a red circle above a blue square", ""])
    assert tokens.shape == (2, 12, 32) and mask.dtype == torch.bool
    # [CLS] a red circle above a blue square [SEP]: 9 real tokens; "" is [CLS] [SEP]
    assert mask.sum(dim=1).tolist() == [9, 2]
    assert encoder.tokens("") == ["[CLS]", "[SEP]"]
    # WordPiece splits an unknown word into pieces instead of failing
    pieces = ["[CLS]", "a", "cr", "##im", "##son", "circle", "[SEP]"]
    assert encoder.tokens("a crimson circle") == pieces
    # frozen: no gradients, eval mode whatever train() says, deterministic
    assert not any(p.requires_grad for p in encoder.parameters())
    encoder.train()
    assert not encoder.training and not encoder.model.training
    again, _ = encoder(["a red circle above a blue square", ""])
    assert torch.equal(tokens, again)


def test_the_cache_of_caption_states_is_exact_and_bounded(tiny_bert: Path):
    cached = PretrainedTextEncoder(tiny_bert, max_length=12, cache_size=3)
    uncached = PretrainedTextEncoder(tiny_bert, max_length=12, cache_size=0)
    batches = [
        ["a red circle", "a blue square", "a red circle"],
        ["a blue square", "a green triangle"],
        ["a red circle", "an orange circle", "a purple square", "a blue square"],
    ]
    for captions in batches:
        a, mask_a = cached(captions)
        b, mask_b = uncached(captions)
        assert torch.equal(mask_a, mask_b) and torch.allclose(a, b, atol=1e-5)
        assert len(cached._cache) <= 3 and not uncached._cache
    assert list(cached._cache) == ["an orange circle", "a purple square", "a blue square"]


def test_padding_does_not_change_real_tokens(tiny_bert: Path):
    short = PretrainedTextEncoder(tiny_bert, max_length=10)
    long = PretrainedTextEncoder(tiny_bert, max_length=16)
    a, mask = short(["a green triangle"])
    b, _ = long(["a green triangle"])
    real = int(mask.sum())
    assert torch.allclose(a[0, :real], b[0, :real], atol=1e-5)


def _hide_the_package(monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == MINILM_PACKAGE else real(name, *a),
    )


def test_bad_input_is_clear(tiny_bert: Path, tmp_path: Path, monkeypatch):
    encoder = PretrainedTextEncoder(tiny_bert, max_length=6)
    with pytest.warns(UserWarning, match="keeping the first 6"):
        tokens, mask = encoder(["a red circle above a blue square"])
    assert mask.all()
    with pytest.raises(TypeError, match="list of captions"):
        encoder("a red circle")
    with pytest.raises(ValueError, match="sha256"):
        PretrainedTextEncoder(tiny_bert, expected_sha256="0" * 64)
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        PretrainedTextEncoder(tmp_path)
    _hide_the_package(monkeypatch)
    with pytest.raises(ModuleNotFoundError, match=r"pip install \"ldm-mini\[pretrained\]\""):
        locate_minilm()


def test_cli_without_the_package_says_how_to_install(monkeypatch, tmp_path: Path, capsys):
    from ldm_mini.cli import main

    _hide_the_package(monkeypatch)
    argv = ["train-ldm", "--preset", "tiny", "--condition", "text", "--text-encoder", "minilm",
            "--dataset", "shapes", "--autoencoder", "shipped:shapes_kl_f4",
            "--set", "data.limit=8", "--out", str(tmp_path / "run")]  # fmt: skip
    assert main(argv) == 2
    assert 'pip install "ldm-mini[pretrained]"' in capsys.readouterr().err


TEXT = {
    "data.dataset": "shapes",
    "data.limit": 32,
    "first_stage.checkpoint": "shipped:shapes_kl_f4",
    "data.options": {"image_size": 32},
    "condition.kind": "text",
    "condition.text_encoder": "minilm",
    "condition.max_length": 12,
    "train.steps": 3,
    "train.checkpoint_every": 3,
    "train.sample_every": 3,
}


def test_ldm_with_a_frozen_encoder_trains_saves_and_loads(tiny_bert: Path, tmp_path: Path):
    values = {**TEXT, "condition.text_encoder_dir": str(tiny_bert)}
    config = apply_overrides(
        load_ldm_preset("tiny"), [f"{k}={json.dumps(v)}" for k, v in values.items()]
    )
    train_ldm(config, tmp_path / "run", progress=False)
    checkpoint = load_checkpoint(tmp_path / "run")
    # the encoder is referenced (folder and sha256), never stored or averaged
    reference = checkpoint.config["tokenizer"]
    assert reference["kind"] == "minilm" and reference["model_sha256"] == file_sha256(
        tiny_bert / "model.safetensors"
    )
    assert not any(k.startswith("condition_encoder.") for k in checkpoint.model_state)
    assert not any(k.startswith("condition_encoder.") for k in checkpoint.ema_state)
    assert checkpoint.config["model"]["context_dim"] == 32
    # the U-Net trained (its EMA moved), the frozen encoder did not
    ldm, _ = load_ldm(tmp_path / "run")
    fresh = PretrainedTextEncoder(tiny_bert, max_length=12)
    fresh_state = fresh.state_dict()
    for name, tensor in ldm.condition_encoder.state_dict().items():
        assert torch.equal(tensor, fresh_state[name]), name
    prompts = ["a crimson circle", "a red circle above a blue square"]
    noise = torch.randn(2, 8, 8, 8, generator=torch.Generator().manual_seed(0))
    first, _ = ldm.sample(2, (8, 8), steps=2, prompts=prompts, guidance=3.0, noise=noise)
    shipped = export_ema_checkpoint(tmp_path / "run", tmp_path / "shipped", {})
    again, _ = load_ldm(shipped)[0].sample(2, (8, 8), steps=2, prompts=prompts, guidance=3.0,
                                             noise=noise)  # fmt: skip
    assert torch.equal(first, again)
    # other weights in the referenced folder: a clear refusal
    (tiny_bert / "model.safetensors").rename(tmp_path / "kept.safetensors")
    try:
        (tiny_bert / "model.safetensors").write_bytes(b"not these weights")
        with pytest.raises(ValueError, match="sha256"):
            load_ldm(shipped)
    finally:
        (tiny_bert / "model.safetensors").unlink()
        (tmp_path / "kept.safetensors").rename(tiny_bert / "model.safetensors")


@pytest.mark.skipif(
    importlib.util.find_spec(MINILM_PACKAGE) is None,
    reason='the packaged MiniLM is optional: pip install "ldm-mini[pretrained]"',
)
def test_the_packaged_minilm_loads_offline_and_matches_its_sha256():
    assert file_sha256(locate_minilm() / "model.safetensors") == MINILM_SHA256
    encoder = PretrainedTextEncoder(max_length=16)
    tokens, mask = encoder(["a crimson circle", "a red circle", "a blue circle", "a red square"])
    assert tokens.shape == (4, 16, 384) and encoder.dim == 384
    assert encoder.tokens("a crimson circle") == ["[CLS]", "a", "crimson", "circle", "[SEP]"]
    # the point of a pretrained encoder: "crimson" lands near "red" (mean token states, cosine)
    mean = (tokens * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    pooled = torch.nn.functional.normalize(mean, dim=-1)
    similarity = pooled[0] @ pooled.T  # crimson circle vs the others
    assert similarity[1] > similarity[2] and similarity[1] > similarity[3], similarity
