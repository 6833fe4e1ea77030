"""Text conditioning: separate-then-concatenate encoding, tiny-random backend, action cache."""

from __future__ import annotations

import torch

from model.text import ActionEmbeddingCache, ByteTokenizer, TextEncoder, action_vocabulary
from schemas.actions import KEY_CODE, KEYS, MOUSE, MOUSE_CODE


def test_byte_tokenizer_is_deterministic_and_padded() -> None:
    out = ByteTokenizer()(["ab", "é"], max_length=4)
    assert out["input_ids"].tolist() == [[100, 101, 1, 0], [198, 172, 1, 0]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 0]]
    assert ByteTokenizer()(["x" * 10], max_length=4)["input_ids"][0, -1] == 1  # truncated, eos kept


def test_encode_shapes_and_separate_then_concat() -> None:
    enc = TextEncoder.tiny(seed=0)
    events = ["A busy street market at dusk.", "A quiet alley."]
    actions = ["Person moves forward (W).", "Camera turns left (←)."]
    emb = enc.encode(events, actions)
    assert emb.shape == (2, enc.event_len + enc.action_len, 32)
    assert enc.tiny_random and enc.model_id.startswith("tiny-random")
    # each half equals the separate encoding: the two descriptions never attend to each other
    assert torch.allclose(emb[:, : enc.event_len], enc.encode_events(events))
    assert torch.allclose(emb[:, enc.event_len :], enc.encode_actions(actions))
    joint = enc.encode_texts([events[0] + " " + actions[0]], enc.event_len + enc.action_len)
    assert not torch.allclose(joint, emb[:1])
    # padding is zeroed, real tokens are not
    n_tokens = len(events[1].encode()) + 1
    assert torch.all(emb[1, n_tokens : enc.event_len] == 0)
    assert torch.all(emb[1, :n_tokens].abs().sum(-1) > 0)
    # same seed, same weights; another seed, other weights
    assert torch.equal(TextEncoder.tiny(seed=0).encode(events, actions), emb)
    assert not torch.allclose(TextEncoder.tiny(seed=1).encode(events, actions), emb)


def test_action_cache_built_once_stored_and_looked_up(tmp_path) -> None:
    enc = TextEncoder.tiny(seed=0)
    path = tmp_path / "actions.safetensors"
    first = ActionEmbeddingCache.load_or_build(enc, path, style="yume")
    assert first.built and path.exists()
    assert first.embeddings.shape == (len(KEYS), len(MOUSE), enc.action_len, enc.dim)
    assert first.meta["tiny_random"] is True
    again = ActionEmbeddingCache.load_or_build(enc, path, style="yume")
    assert not again.built and torch.equal(again.embeddings, first.embeddings)
    # a lookup equals encoding that description directly
    k, m = torch.tensor([KEY_CODE["W+A"], 0]), torch.tensor([MOUSE_CODE["←"], 0])
    texts = action_vocabulary("yume")
    direct = enc.encode_actions([texts[k[0] * len(MOUSE) + m[0]], texts[0]])
    assert torch.allclose(again.lookup(k, m), direct, atol=1e-6)
    # another phrase set or encoder rebuilds instead of reusing a stale cache
    other = ActionEmbeddingCache.load_or_build(enc, path, style="yume5b")
    assert other.built and not torch.allclose(other.embeddings, first.embeddings)
    rebuilt = ActionEmbeddingCache.load_or_build(TextEncoder.tiny(seed=3), path, style="yume5b")
    assert rebuilt.built
