"""Condition encoders (ldm_mini.conditioning): class embedder, word tokenizer, text encoder."""

from __future__ import annotations

import pytest
import torch

from ldm_mini.conditioning import (
    SPECIAL_TOKENS,
    ClassEmbedder,
    TextEncoder,
    WordTokenizer,
    words_of,
)

pytestmark = pytest.mark.usefixtures("one_thread")

CAPTIONS = [
    "a red circle above a blue square",
    "an orange triangle",
    "a green square to the left of a red circle",
]


def tokenizer(max_length: int = 16) -> WordTokenizer:
    return WordTokenizer.from_captions(CAPTIONS, max_length=max_length)


def test_words_are_lower_cased_and_split_on_punctuation():
    assert words_of("A Red circle, ABOVE a blue-square!") == [
        "a", "red", "circle", "above", "a", "blue", "square",
    ]  # fmt: skip
    assert words_of("   ") == []
    with pytest.raises(TypeError, match="must be a str"):
        words_of(3)


def test_vocabulary_is_special_tokens_then_words_by_frequency():
    tok = tokenizer()
    assert tuple(tok.vocabulary[:3]) == SPECIAL_TOKENS
    assert tok.vocabulary[3] == "a"  # the most frequent word
    assert set(tok.vocabulary[3:]) == {w for c in CAPTIONS for w in words_of(c)}
    again = WordTokenizer.from_dict(tok.to_dict())
    assert again.vocabulary == tok.vocabulary and again.max_length == tok.max_length
    with pytest.raises(ValueError, match="no words"):
        WordTokenizer.from_captions(["", "!!"])
    with pytest.raises(ValueError, match="special tokens"):
        WordTokenizer(["a", "b"])


def test_encode_start_token_mask_and_round_trip():
    tok = tokenizer(max_length=10)
    ids, mask = tok.encode(["an orange triangle", ""])
    assert ids.shape == mask.shape == (2, 10) and ids.dtype == torch.long
    start = tok.index["<start>"]
    assert ids[0, :4].tolist() == [
        start,
        tok.index["an"],
        tok.index["orange"],
        tok.index["triangle"],
    ]
    assert mask[0].tolist() == [True] * 4 + [False] * 6
    assert (ids[0, 4:] == tok.pad_id).all()
    # the empty caption (the null condition) is the start token alone
    assert mask[1].tolist() == [True] + [False] * 9 and ids[1, 0] == start
    assert tok.decode(ids, mask) == ["an orange triangle", ""]


def test_unknown_words_and_long_captions_are_clear():
    tok = tokenizer(max_length=5)
    with pytest.raises(ValueError, match=r"outside the vocabulary: \['crimson'\]"):
        tok.encode(["a crimson circle"])
    ids, mask = tok.encode(["a crimson circle"], unknown="unk")
    assert ids[0, 2] == tok.index["<unk>"] and mask[0, :4].all()
    with pytest.warns(UserWarning, match="keeping the first 4"):
        ids, mask = tok.encode(["a red circle above a blue square"])
    assert tok.decode(ids, mask) == ["a red circle above"] and mask.all()
    with pytest.raises(ValueError, match="the limit is 4"):
        tok.encode(["a red circle above a blue square"], truncate=False)
    with pytest.raises(TypeError, match="list of captions"):
        tok.encode("a red circle")


def test_class_embedder_null_class_and_range():
    torch.manual_seed(0)
    embedder = ClassEmbedder(num_classes=10, dim=16)
    tokens, mask = embedder(torch.tensor([0, 9, 10]))
    assert tokens.shape == (3, 1, 16) and mask.shape == (3, 1) and mask.all()
    assert torch.equal(tokens[2, 0], embedder.embedding.weight[10])  # the null class row
    assert embedder.null_condition(2).tolist() == [10, 10]
    with pytest.raises(ValueError, match=r"must lie in \[0, 10\)"):
        embedder(torch.tensor([11]))
    with pytest.raises(ValueError, match=r"must lie in \[0, 10\)"):
        embedder(torch.tensor([-1]))
    with pytest.raises(ValueError, match="integer tensor"):
        embedder(torch.tensor([0.5]))


def test_text_encoder_shapes_determinism_and_padding_changes_nothing():
    torch.manual_seed(0)
    encoder = TextEncoder(tokenizer(max_length=12), dim=32, depth=2, heads=4).eval()
    tokens, mask = encoder(["a red circle", "an orange triangle above a blue square"])
    assert tokens.shape == (2, 12, 32) and mask.shape == (2, 12)
    again, _ = encoder(["a red circle", "an orange triangle above a blue square"])
    assert torch.equal(tokens, again)
    # the real tokens do not depend on what sits in the padded positions, nor on their number
    ids, mask = encoder.tokenizer.encode(["a red circle"])
    garbage = ids.clone()
    garbage[~mask] = torch.randint(3, len(encoder.tokenizer), (int((~mask).sum()),))
    with torch.no_grad():
        clean = encoder.encode_ids(ids, mask)
        noisy = encoder.encode_ids(garbage, mask)
        short = encoder.encode_ids(ids[:, :6], mask[:, :6])
    real = mask[0]
    torch.testing.assert_close(noisy[0, real], clean[0, real])
    torch.testing.assert_close(short[0, real[:6]], clean[0, real])
    # without the mask the padding would leak in: the check above can fail
    with torch.no_grad():
        leaky = encoder.encode_ids(garbage, torch.ones_like(mask))
    assert not torch.allclose(leaky[0, real], clean[0, real])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        encoder(["a crimson circle"])
    assert encoder.null_condition(2) == ["", ""]


def test_positions_weigh_as_much_as_words_at_initialisation():
    # a bag of words cannot tell "a red circle above a blue square" from "a blue circle above a
    # red square": position and token embeddings start at the same scale (std 0.02 both)
    tokenizer = WordTokenizer.from_captions(["a red circle above a blue square"])
    torch.manual_seed(0)
    encoder = TextEncoder(tokenizer, dim=128, depth=2, heads=4).eval()
    token_norm = encoder.token_embedding.weight.detach().norm(dim=1).mean()
    position_norm = encoder.position_embedding.detach().norm(dim=1).mean()
    assert 0.5 < float(position_norm / token_norm) < 2.0
    with torch.no_grad():
        tokens, _ = encoder(["a red circle above a blue square"])
    same_word = torch.nn.functional.cosine_similarity(tokens[0, 1], tokens[0, 5], dim=0)
    assert same_word < 0.995, "the two 'a's must differ by their positions"
