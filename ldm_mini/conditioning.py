"""Condition encoders tau_theta: class labels and text to the tokens the U-Net cross-attends to.

Taught in notebook 07_cross_attention_conditioning. The paper (Sec. 3.3) maps a condition y
with a domain-specific encoder tau_theta to a sequence tau_theta(y) of shape (B, M, d_tau);
every transformer of the U-Net then attends to it with Q = W_Q phi(z_t), K = W_K tau_theta(y),
V = W_V tau_theta(y). Every encoder here returns ``(tokens, mask)``: tokens (B, M, d_tau) and
a bool mask (B, M), True for a real token, False for padding (padding gets zero attention).

* :class:`ClassEmbedder`: one learned token per class, plus a learned null class
  (index ``num_classes``) for classifier-free guidance.
* :class:`WordTokenizer` + :class:`TextEncoder`: the paper's jointly trained text encoder in
  miniature, a word-level vocabulary built from the dataset's captions and a small
  transformer. Word level, not WordPiece: the course's captions use a closed vocabulary of a
  few dozen words ("a red circle above a blue square"), so every word is one token, the
  attention maps of notebook 07 are per word, and an unknown word is a clear error instead
  of being split into pieces the model never saw. The null condition is the empty caption
  (only the start token), as in Stable Diffusion.
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ldm_mini.attention import Attention, FeedForward
from ldm_mini.configs import Section

PAD, UNKNOWN, START = "<pad>", "<unk>", "<start>"
SPECIAL_TOKENS = (PAD, UNKNOWN, START)
UNKNOWN_POLICIES = ("error", "unk")
# "layout": boxes through cross-attention; "label_map": a label map concatenated to z_t
# (ldm_mini.layouts, notebook 11)
CONDITIONS = ("none", "class", "text", "layout", "label_map")
# "trained": the word-level TextEncoder, trained jointly; "minilm": a frozen pretrained MiniLM
TEXT_ENCODERS = ("trained", "minilm")
_WORD = re.compile(r"[a-z0-9]+")


def words_of(text: str) -> list[str]:
    """Lower-cased words of ``text`` (letters and digits; punctuation and spaces split)."""
    if not isinstance(text, str):
        raise TypeError(f"a caption must be a str, got {type(text).__name__}")
    return _WORD.findall(text.lower())


def check_class_labels(labels: Tensor, num_classes: int) -> None:
    """Labels must be an integer tensor (B,) in [0, num_classes], num_classes being the null
    class of classifier-free guidance; anything else is a ValueError saying what was given."""
    if (
        not isinstance(labels, Tensor)
        or labels.ndim != 1
        or labels.is_floating_point()
        or labels.dtype == torch.bool
    ):
        raise ValueError(
            "labels must be an integer tensor (B,), got "
            f"{getattr(labels, 'dtype', type(labels))} of shape "
            f"{tuple(getattr(labels, 'shape', ()))}."
        )
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) > num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes}) (or be {num_classes}, the null class), "
            f"got [{int(labels.min())}, {int(labels.max())}]."
        )


class ClassEmbedder(nn.Module):
    """tau_theta for class labels: label (B,) -> one token (B, 1, dim) and its mask (B, 1).

    Labels 0..num_classes-1 are the classes; ``num_classes`` itself is the learned null class
    (the unconditional branch of classifier-free guidance). Other values are a clear error.
    """

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        self.num_classes = num_classes
        self.dim = dim
        self.embedding = nn.Embedding(num_classes + 1, dim)

    @property
    def null_label(self) -> int:
        return self.num_classes

    def null_condition(self, batch: int) -> Tensor:
        """Labels (batch,) of the null class."""
        return torch.full((batch,), self.num_classes, dtype=torch.long)

    def forward(self, labels: Tensor) -> tuple[Tensor, Tensor]:
        check_class_labels(labels, self.num_classes)
        # tau_theta(y) = E[y]: one token per sample
        tokens = self.embedding(labels.long())[:, None, :]
        return tokens, torch.ones(labels.shape[0], 1, dtype=torch.bool, device=labels.device)


def _short(caption: str, words: int = 8) -> str:
    """A caption for a message: itself if short, else its first words and how many follow."""
    parts = caption.split()
    if len(parts) <= words and len(caption) <= 80:
        return repr(caption)
    return repr(" ".join(parts[:words])[:80] + f" ... (+{len(parts) - words} words)")


class WordTokenizer:
    """A word-level vocabulary built from captions; captions -> token ids and a padding mask.

    Every caption becomes ``<start> w_1 ... w_n`` then padding up to ``max_length``; the
    empty caption is ``<start>`` alone, the null condition. Captions longer than
    ``max_length - 1`` words are truncated with a warning (``truncate=True``, the default) or
    refused. Words outside the vocabulary are an error naming them (``unknown="error"``, the
    default) or become ``<unk>`` (``unknown="unk"``). The vocabulary is plain JSON
    (:meth:`to_dict`), stored in checkpoints' config.
    """

    def __init__(self, vocabulary: Sequence[str], max_length: int = 16) -> None:
        vocabulary = list(vocabulary)
        if tuple(vocabulary[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise ValueError(f"the vocabulary must start with the special tokens {SPECIAL_TOKENS}")
        if len(set(vocabulary)) != len(vocabulary):
            raise ValueError("the vocabulary has duplicate words")
        if not isinstance(max_length, int) or max_length < 2:
            raise ValueError(
                f"max_length must be an int >= 2 (start + one word), got {max_length!r}"
            )
        self.vocabulary = vocabulary
        self.max_length = max_length
        self.index = {word: i for i, word in enumerate(vocabulary)}

    @classmethod
    def from_captions(
        cls, captions: Iterable[str], max_length: int = 16, min_count: int = 1
    ) -> WordTokenizer:
        """Every word seen at least ``min_count`` times, most frequent first (ties: a-z)."""
        counts = Counter(word for caption in captions for word in words_of(caption))
        if not counts:
            raise ValueError("no words in the captions: cannot build a vocabulary")
        words = sorted(
            (w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w)
        )
        return cls([*SPECIAL_TOKENS, *words], max_length)

    def __len__(self) -> int:
        return len(self.vocabulary)

    @property
    def pad_id(self) -> int:
        return self.index[PAD]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "word", "vocabulary": list(self.vocabulary), "max_length": self.max_length}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> WordTokenizer:
        if values.get("kind") != "word":
            raise ValueError(f"not a word-level tokenizer: kind={values.get('kind')!r}")
        return cls(values["vocabulary"], int(values["max_length"]))

    def encode(
        self, captions: Sequence[str], unknown: str = "error", truncate: bool = True
    ) -> tuple[Tensor, Tensor]:
        """Captions (B strings) -> ids (B, max_length) long and mask (B, max_length) bool."""
        if unknown not in UNKNOWN_POLICIES:
            raise ValueError(f"unknown must be one of {UNKNOWN_POLICIES}, got {unknown!r}")
        if isinstance(captions, str):
            raise TypeError("pass a list of captions, e.g. ['a red circle'], not one string")
        ids = torch.full((len(captions), self.max_length), self.pad_id, dtype=torch.long)
        mask = torch.zeros(len(captions), self.max_length, dtype=torch.bool)
        for row, caption in enumerate(captions):
            words = words_of(caption)
            missing = sorted({w for w in words if w not in self.index})
            if missing and unknown == "error":
                raise ValueError(
                    f"caption {_short(caption)} has words outside the vocabulary: {missing[:10]}"
                    f"{' ...' if len(missing) > 10 else ''}. This text "
                    f"encoder knows {len(self) - len(SPECIAL_TOKENS)} words (see "
                    "tokenizer.vocabulary); rephrase, or pass unknown='unk' to map them to <unk>."
                )
            if len(words) > self.max_length - 1:
                if not truncate:
                    raise ValueError(
                        f"caption {_short(caption)} has {len(words)} words; the limit is "
                        f"{self.max_length - 1} (max_length {self.max_length} with <start>)"
                    )
                warnings.warn(
                    f"caption {_short(caption)} has {len(words)} words; keeping the first "
                    f"{self.max_length - 1} (max_length {self.max_length} with <start>)",
                    stacklevel=2,
                )
                words = words[: self.max_length - 1]
            tokens = [self.index[START]] + [self.index.get(w, self.index[UNKNOWN]) for w in words]
            ids[row, : len(tokens)] = torch.tensor(tokens)
            mask[row, : len(tokens)] = True
        return ids, mask

    def decode(self, ids: Tensor, mask: Tensor | None = None) -> list[str]:
        """Token ids (B, L) -> the words (without <start> and padding), joined by spaces."""
        texts = []
        for row in range(ids.shape[0]):
            keep = range(ids.shape[1]) if mask is None else mask[row].nonzero().flatten().tolist()
            words = [self.vocabulary[int(ids[row, i])] for i in keep]
            texts.append(" ".join(w for w in words if w not in (PAD, START)))
        return texts


class TextEncoderLayer(nn.Module):
    """Pre-norm transformer encoder layer with a padding mask: (B, L, dim) -> (B, L, dim)."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} must be divisible by heads {heads}")
        self.norm1 = nn.LayerNorm(dim)
        self.attention = Attention(dim, None, heads, dim // heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.feed_forward = FeedForward(dim, dropout=dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        # x <- x + SelfAttn(LN(x)), padding keys masked out
        x = x + self.attention(self.norm1(x), key_padding_mask=mask)
        # x <- x + FF(LN(x))
        return x + self.feed_forward(self.norm2(x))


class TextEncoder(nn.Module):
    """tau_theta for text, trained jointly with the U-Net (the paper's transformer, small).

    ``forward(captions)`` tokenizes with its :class:`WordTokenizer` and returns ``(tokens,
    mask)``: tokens (B, max_length, dim) after a final LayerNorm, mask (B, max_length) True
    for real tokens. Padded positions cannot influence real ones (masked self-attention), so
    the tokens of a caption do not depend on how much padding follows it.
    """

    def __init__(
        self,
        tokenizer: WordTokenizer,
        dim: int = 128,
        depth: int = 2,
        heads: int = 4,
        dropout: float = 0.0,
        unknown: str = "error",
    ) -> None:
        super().__init__()
        if unknown not in UNKNOWN_POLICIES:
            raise ValueError(f"unknown must be one of {UNKNOWN_POLICIES}, got {unknown!r}")
        self.tokenizer = tokenizer
        self.dim = dim
        self.unknown = unknown
        self.token_embedding = nn.Embedding(len(tokenizer), dim)
        self.position_embedding = nn.Parameter(torch.zeros(tokenizer.max_length, dim))
        # both at the same small scale (as GPT-2 and CLIP initialise them): with nn.Embedding's
        # default N(0, 1) the positions would be ~2% of a token's norm, and "red" in "a red
        # circle above a blue square" would hardly know which object it belongs to
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.position_embedding, std=0.02)
        self.layers = nn.ModuleList(TextEncoderLayer(dim, heads, dropout) for _ in range(depth))
        self.final_norm = nn.LayerNorm(dim)

    def null_condition(self, batch: int) -> list[str]:
        """The null condition for classifier-free guidance: ``batch`` empty captions."""
        return [""] * batch

    def encode_ids(self, ids: Tensor, mask: Tensor) -> Tensor:
        """Token ids (B, L) and mask (B, L) -> tokens (B, L, dim)."""
        if ids.ndim != 2 or mask.shape != ids.shape:
            raise ValueError(
                f"ids and mask must both be (B, L), got {tuple(ids.shape)}, {tuple(mask.shape)}"
            )
        length = ids.shape[1]
        if length > self.tokenizer.max_length:
            raise ValueError(f"{length} tokens, more than max_length {self.tokenizer.max_length}")
        # h_0 = E_token[ids] + E_position[0..L-1]
        x = self.token_embedding(ids) + self.position_embedding[:length]
        for layer in self.layers:
            x = layer(x, mask)
        return self.final_norm(x)

    def forward(self, captions: Sequence[str]) -> tuple[Tensor, Tensor]:
        ids, mask = self.tokenizer.encode(captions, unknown=self.unknown)
        device = self.token_embedding.weight.device
        ids, mask = ids.to(device), mask.to(device)
        return self.encode_ids(ids, mask), mask


# --------------------------------------------------------------------------------------
# The condition section of a config, and the tau_theta it describes
# --------------------------------------------------------------------------------------


@dataclass
class ConditionConfig(Section):
    """What the U-Net is conditioned on, and how often the condition is dropped (CFG)."""

    kind: str = "class"
    drop_probability: float = 0.1
    num_classes: int | None = None  # None: read from the dataset's labels
    # text (kind "text"): tau_theta, a word-level tokenizer + transformer trained jointly
    text_dim: int = 128
    text_depth: int = 2
    text_heads: int = 4
    max_length: int = 16  # tokens, with the start token: captions of up to 15 words
    unknown_words: str = "error"  # or "unk": words outside the vocabulary become <unk>
    # "trained": the word-level TextEncoder above, trained jointly; "minilm": a frozen
    # pretrained MiniLM (ldm_mini.pretrained_text, 384-dim tokens; text_dim/depth/heads and
    # unknown_words then do not apply), from the installed package or text_encoder_dir
    text_encoder: str = "trained"
    text_encoder_dir: str | None = None
    # layouts (kind "layout"): box corners quantised on a layout_grid x layout_grid grid; a
    # transformer of text_dim / text_depth / text_heads; at most max_objects objects
    layout_grid: int = 16
    max_objects: int = 2

    def __post_init__(self) -> None:
        if self.kind not in CONDITIONS:
            raise ValueError(f"condition.kind must be one of {CONDITIONS}, got {self.kind!r}")
        if not 0.0 <= self.drop_probability <= 1.0:
            raise ValueError(f"drop_probability must be in [0, 1], got {self.drop_probability}")
        if self.text_encoder not in TEXT_ENCODERS:
            raise ValueError(
                f"condition.text_encoder must be one of {TEXT_ENCODERS}, got {self.text_encoder!r}"
            )
        if not isinstance(self.layout_grid, int) or self.layout_grid < 2:
            raise ValueError(f"condition.layout_grid must be an int >= 2, got {self.layout_grid!r}")
        if not isinstance(self.max_objects, int) or self.max_objects < 1:
            raise ValueError(
                f"condition.max_objects must be a positive int, got {self.max_objects!r}"
            )
        if self.unknown_words not in UNKNOWN_POLICIES:
            raise ValueError(
                f"condition.unknown_words must be one of {UNKNOWN_POLICIES}, "
                f"got {self.unknown_words!r}"
            )


def build_pretrained_text_encoder(
    condition: ConditionConfig, expected_sha256: str | None = None
) -> nn.Module:
    """The frozen MiniLM tau_theta of ``condition.text_encoder == "minilm"``."""
    from ldm_mini.pretrained_text import PretrainedTextEncoder

    return PretrainedTextEncoder(
        condition.text_encoder_dir, condition.max_length, expected_sha256=expected_sha256
    )


def build_text_encoder(condition: ConditionConfig, tokenizer: WordTokenizer) -> TextEncoder:
    """tau_theta for ``condition.kind == "text"`` with the condition's sizes."""
    return TextEncoder(
        tokenizer,
        dim=condition.text_dim,
        depth=condition.text_depth,
        heads=condition.text_heads,
        unknown=condition.unknown_words,
    )


def build_layout_encoder(condition: ConditionConfig) -> nn.Module:
    """tau_theta for ``condition.kind == "layout"`` (:class:`ldm_mini.layouts.LayoutEncoder`)."""
    from ldm_mini.layouts import LayoutEncoder, LayoutTokenizer

    tokenizer = LayoutTokenizer(condition.layout_grid, condition.max_objects)
    return LayoutEncoder(
        tokenizer, dim=condition.text_dim, depth=condition.text_depth, heads=condition.text_heads
    )
