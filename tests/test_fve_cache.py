"""The content-addressed embedding cache on real encodes: a later cycle re-encodes only the items
whose prompt changed, a re-run re-encodes nothing, and every input of the embedding is in the key."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from recbole_reveal.data.feature_store import load_item_features
from recbole_reveal.fve.cache import EmbeddingCache, embedding_key
from recbole_reveal.fve.encoder import FVEEncoder, ItemRequest, item_requests, save_encoding
from recbole_reveal.fve.prompts import build_initial_prompts, read_items
from recbole_reveal.fve.vlm import build_tiny_qwen2_5_vl, load_vlm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "dataset_atomic", "synthetic-demo")
BUDGET = dict(min_pixels=56 * 56, max_pixels=112 * 112)
N = 6


@pytest.fixture(scope="module")
def vlm(tmp_path_factory):
    return load_vlm(build_tiny_qwen2_5_vl(str(tmp_path_factory.mktemp("vlm") / "tiny")), device="cpu")


@pytest.fixture(scope="module")
def demo_requests():
    """The first N demo items with their real initial prompts and image files."""
    records = build_initial_prompts("synthetic-demo", os.path.dirname(DEMO))
    items = read_items(os.path.join(DEMO, "synthetic-demo.item"))
    return item_requests(items, records, DEMO)[:N]


def _with_prompts(requests, changes):
    return [ItemRequest(r.token, r.image_path, changes.get(r.token, r.prompt)) for r in requests]


def test_rerun_encodes_nothing(vlm, demo_requests, tmp_path):
    cache = EmbeddingCache(str(tmp_path / "cache"))
    first = FVEEncoder(vlm, **BUDGET).encode_items(demo_requests, cache)
    assert cache.stats() == {"hits": 0, "misses": N, "writes": N, "corrupt": 0}
    assert first.encoded == [r.token for r in demo_requests] and first.cached == []
    cache.reset_stats()
    again = FVEEncoder(vlm, **BUDGET).encode_items(demo_requests, EmbeddingCache(str(tmp_path / "cache")))
    assert again.encoded == [] and len(again.cached) == N
    assert again.vision == {"memory_hits": 0, "disk_hits": 0, "misses": 0}  # nothing ran at all
    assert np.array_equal(again.matrix, first.matrix)


def test_a_cycle_reencodes_only_changed_prompts(vlm, demo_requests, tmp_path):
    cache = EmbeddingCache(str(tmp_path / "cache"))
    enc = FVEEncoder(vlm, **BUDGET)
    before = enc.encode_items(demo_requests, cache).matrix
    cache.reset_stats()
    changes = {demo_requests[1].token: "An item image of a backpack. Focus on its colour and pattern.",
               demo_requests[4].token: "An item image of a watch. Focus on the dial."}
    after = enc.encode_items(_with_prompts(demo_requests, changes), cache)
    assert sorted(after.encoded) == sorted(changes) and len(after.cached) == N - 2
    assert cache.stats() == {"hits": N - 2, "misses": 2, "writes": 2, "corrupt": 0}
    unchanged = [k for k, r in enumerate(demo_requests) if r.token not in changes]
    assert np.array_equal(after.matrix[unchanged], before[unchanged])
    assert np.all((after.matrix[[1, 4]] * before[[1, 4]]).sum(1) < 1 - 1e-4)
    fresh = FVEEncoder(vlm, **BUDGET).encode_items(_with_prompts(demo_requests, changes)).matrix
    np.testing.assert_allclose(after.matrix, fresh, atol=1e-6)


def test_key_covers_image_bytes_model_and_settings(vlm, demo_requests, tmp_path):
    root = str(tmp_path / "cache")
    FVEEncoder(vlm, **BUDGET).encode_items(demo_requests, EmbeddingCache(root))
    for kwargs in (dict(pooling="text_after_image"), dict(layer=1), dict(min_pixels=56 * 56, max_pixels=84 * 84)):
        cache = EmbeddingCache(root)
        FVEEncoder(vlm, **dict(BUDGET, **kwargs)).encode_items(demo_requests, cache)
        assert cache.hits == 0 and cache.misses == N, kwargs
    other_vlm = load_vlm(build_tiny_qwen2_5_vl(str(tmp_path / "seed1"), seed=1), device="cpu")
    cache = EmbeddingCache(root)
    FVEEncoder(other_vlm, **BUDGET).encode_items(demo_requests, cache)
    assert cache.hits == 0, "another checkpoint must not reuse embeddings"
    # the same item token with different image bytes is a different entry
    moved = str(tmp_path / "i.png")
    Image.open(demo_requests[0].image_path).rotate(90).save(moved)
    cache = EmbeddingCache(root)
    result = FVEEncoder(vlm, **BUDGET).encode_items(
        [ItemRequest(demo_requests[0].token, moved, demo_requests[0].prompt)] + demo_requests[1:], cache)
    assert result.encoded == [demo_requests[0].token] and cache.hits == N - 1


def test_duplicate_requests_are_encoded_once(vlm, demo_requests, tmp_path):
    cache = EmbeddingCache(str(tmp_path / "cache"))
    twin = ItemRequest("twin", demo_requests[0].image_path, demo_requests[0].prompt)
    result = FVEEncoder(vlm, **BUDGET).encode_items([demo_requests[0], twin], cache)
    assert cache.writes == 1 and np.array_equal(result.matrix[0], result.matrix[1])


def test_corrupt_entries_are_misses_and_get_rewritten(vlm, demo_requests, tmp_path):
    root = str(tmp_path / "cache")
    enc = FVEEncoder(vlm, **BUDGET)
    first = enc.encode_items(demo_requests[:2], EmbeddingCache(root)).matrix
    key, _ = embedding_key(_sha(demo_requests[0].image_path), demo_requests[0].prompt, vlm.model_id, enc.settings())
    path = os.path.join(root, key[:2], key + ".npy")
    with open(path, "r+b") as f:
        f.truncate(40)
    cache = EmbeddingCache(root)
    result = enc.encode_items(demo_requests[:2], cache)
    assert cache.corrupt == 1 and result.encoded == [demo_requests[0].token]
    np.testing.assert_allclose(result.matrix, first, atol=1e-6)
    assert np.array_equal(np.load(path), result.matrix[0])   # rewritten whole


def _sha(path):
    import hashlib

    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_entries_are_complete_files_with_their_key(vlm, demo_requests, tmp_path):
    root = str(tmp_path / "cache")
    FVEEncoder(vlm, **BUDGET).encode_items(demo_requests, EmbeddingCache(root))
    names = [n for _, _, files in os.walk(root) for n in files]
    assert len(names) == 2 * N and all(n.endswith((".npy", ".json")) and not n.startswith(".tmp") for n in names)
    meta = [json.load(open(os.path.join(d, n))) for d, _, files in os.walk(root) for n in files if n.endswith(".json")]
    assert {m["prompt"] for m in meta} == {r.prompt for r in demo_requests}
    assert all(m["model_id"] == vlm.model_id and m["settings"]["pooling"] == "image_after_prompt" for m in meta)


def test_unit_rules(tmp_path):
    cache = EmbeddingCache(str(tmp_path))
    with pytest.raises(ValueError, match="non-finite"):
        cache.put("ab" * 32, np.array([1.0, np.nan], dtype=np.float32))
    cache.put("cd" * 32, np.ones(3, dtype=np.float32))
    assert cache.get("cd" * 32, dim=4) is None and cache.corrupt == 1   # wrong dimension: a miss
    assert np.array_equal(cache.get("cd" * 32, dim=3), np.ones(3, dtype=np.float32))
    k1, _ = embedding_key("img", "a prompt", "m", {"pooling": "x"})
    k2, _ = embedding_key("img", "a prompt ", "m", {"pooling": "x"})
    assert k1 != k2 and k1 == embedding_key("img", "a prompt", "m", {"pooling": "x"})[0]


def test_save_encoding_writes_a_feature_set(vlm, demo_requests, tmp_path):
    enc = FVEEncoder(vlm, **BUDGET)
    requests = demo_requests[:3] + [ItemRequest("lost", str(tmp_path / "none.png"), "An item image.")]
    result = enc.encode_items(requests, EmbeddingCache(str(tmp_path / "cache")))
    feature_dir = str(tmp_path / "features")
    save_encoding(result, enc, feature_dir, "fve/cycle_0", {"cycle": 0})
    tokens, matrix = load_item_features(feature_dir, "fve/cycle_0", expected_dim=64)
    assert tokens == [r.token for r in requests] and np.array_equal(matrix, result.matrix)
    meta = json.load(open(os.path.join(feature_dir, "fve", "cycle_0.json")))
    assert meta["fve_pooling"] == "image_after_prompt" and meta["vlm_model_id"] == vlm.model_id
    assert meta["missing_image_items"] == ["lost"] and meta["encoded"] == 3 and meta["cycle"] == 0


def test_item_requests_need_one_prompt_per_item():
    items = read_items(os.path.join(DEMO, "synthetic-demo.item"))[:2]
    records = [{"item_id": items[0].item_id, "prompt": "p"}, {"item_id": "zzz", "prompt": "q"}]
    with pytest.raises(ValueError, match=r"1 items without a prompt \(i0001\), 1 prompts for unknown items \(zzz\)"):
        item_requests(items, records, DEMO)
