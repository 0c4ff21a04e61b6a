"""The content-addressed embedding cache on real encodes: a later cycle re-encodes only the items
whose prompt changed, a re-run re-encodes nothing, and every input of the embedding is in the key."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from recbole_reveal.data.feature_store import load_item_features
from recbole_reveal.fve.encoding.cache.embeddings import EmbeddingCache, _Shard, embedding_key
from recbole_reveal.fve.encoding.encoder import FVEEncoder, ItemRequest, item_requests, save_encoding
from recbole_reveal.fve.prompts.records import read_items
from recbole_reveal.fve.prompts.templates import build_initial_prompts
from recbole_reveal.fve.vlm.load import load_vlm
from recbole_reveal.testing.vlms import build_tiny_qwen2_5_vl

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
    (shard,) = EmbeddingCache(root).files()
    table = _Shard(shard)
    row = table.keys.index(bytes.fromhex(key))
    with open(shard, "r+b") as f:                        # flip one float of that entry's vector
        f.seek(table.vectors_at + 4 * table.dim * row + 8)
        f.write(b"\x7f\x7f\x7f\x3f")
    cache = EmbeddingCache(root)
    result = enc.encode_items(demo_requests[:2], cache)
    assert cache.corrupt == 1 and result.encoded == [demo_requests[0].token]
    np.testing.assert_allclose(result.matrix, first, atol=1e-6)
    again = EmbeddingCache(root)                          # the rewrite, in a later shard, shadows the bad row
    assert np.array_equal(again.get(key, 64), result.matrix[0]) and again.corrupt == 0
    assert len(again.files()) == 2


def _sha(path):
    import hashlib

    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_entries_are_batched_into_shards_with_their_key_fields(vlm, demo_requests, tmp_path):
    root = str(tmp_path / "cache")
    FVEEncoder(vlm, **BUDGET).encode_items(demo_requests, EmbeddingCache(root))
    names = [os.path.relpath(os.path.join(d, n), root) for d, _, files in os.walk(root) for n in files]
    assert len(names) == 1 and names[0].startswith("shards" + os.sep) and names[0].endswith(".fvs")
    meta = _Shard(os.path.join(root, names[0])).fields()
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


# ---------------------------------------------------------------- the shard store itself (no VLM)
def _vec(key, dim=16):
    """A vector determined by its key, so any reader can check what it read."""
    return np.random.default_rng(int(key[:8], 16)).normal(size=dim).astype(np.float32)


def _keys(n, salt=""):
    import hashlib

    return [hashlib.sha256(f"{salt}{k}".encode()).hexdigest() for k in range(n)]


def test_entries_go_to_a_few_shards_and_read_back_after_reopening(tmp_path):
    root = str(tmp_path / "c")
    cache = EmbeddingCache(root, shard_entries=10)
    keys = _keys(25)
    for k in keys:
        cache.put(k, _vec(k), {"k": k})
    assert len(cache.files()) == 2            # two full shards published on the way; 5 entries buffered
    assert np.array_equal(cache.get(keys[-1], 16), _vec(keys[-1]))   # a buffered entry is already served
    cache.close()
    assert len(cache.files()) == 3 and sorted(os.listdir(os.path.join(root, "shards"))) == \
        sorted(os.path.basename(f) for f in cache.files())            # no temporary file left behind
    again = EmbeddingCache(root)
    assert len(again) == 25 and all(np.array_equal(again.get(k, 16), _vec(k)) for k in keys)
    assert again.get(_keys(1, "other")[0]) is None and again.stats()["misses"] == 1
    assert [f["k"] for f in _Shard(cache.files()[0]).fields()] == keys[:10]


def test_buffered_entries_are_published_when_the_cache_is_dropped(tmp_path):
    import gc

    root = str(tmp_path / "c")
    cache = EmbeddingCache(root)
    keys = _keys(3)
    for k in keys:
        cache.put(k, _vec(k))
    assert EmbeddingCache(root).get(keys[0]) is None                  # not yet published
    del cache
    gc.collect()
    assert all(np.array_equal(EmbeddingCache(root).get(k), _vec(k)) for k in keys)
    with EmbeddingCache(root) as cache:
        cache.put(_keys(1, "x")[0], _vec(_keys(1, "x")[0]))
    assert len(EmbeddingCache(root)) == 4


def test_partial_and_foreign_files_are_never_read_as_entries(tmp_path, caplog):
    root = str(tmp_path / "c")
    with EmbeddingCache(root) as cache:
        for k in _keys(4):
            cache.put(k, _vec(k))
    (good,) = EmbeddingCache(root).files()
    shards = os.path.join(root, "shards")
    with open(good, "rb") as f:
        blob = f.read()
    with open(os.path.join(shards, ".tmp-abc" + os.path.basename(good)), "wb") as f:
        f.write(blob[:100])                     # a writer killed mid-write leaves only a temporary file
    with open(os.path.join(shards, "99999999999999999999-1-00000000.fvs"), "wb") as f:
        f.write(blob[:-10])                     # a damaged shard: refused whole
    cache = EmbeddingCache(root)
    assert len(cache) == 4 and all(np.array_equal(cache.get(k), _vec(k)) for k in _keys(4))
    assert "ignoring unreadable shard" in caplog.text and "truncated" in caplog.text


_WRITER = """
import hashlib, importlib.util, numpy as np
spec = importlib.util.spec_from_file_location("fve_cache", {module!r})    # the module alone: a fast start
fve_cache = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fve_cache)
EmbeddingCache = fve_cache.EmbeddingCache
cache = EmbeddingCache({root!r}, shard_entries=40)
for k in range({n}):
    key = hashlib.sha256(str(k).encode()).hexdigest()
    cache.put(key, np.random.default_rng(int(key[:8], 16)).normal(size=512).astype(np.float32))
cache.close()
"""


def test_a_reader_sees_whole_shards_while_another_process_appends(tmp_path, caplog):
    """Another process publishes 30 shards while this one keeps refreshing and reading: every entry it
    can see reads back exactly, it never meets a partial shard, and in the end it sees them all."""
    import subprocess
    import sys
    import time

    root, n = str(tmp_path / "c"), 1200
    os.makedirs(root)
    import recbole_reveal.fve.encoding.cache.embeddings as module

    writer = subprocess.Popen([sys.executable, "-c", _WRITER.format(module=module.__file__, root=root, n=n)])
    reader = EmbeddingCache(root)
    keys, checked, seen = _keys(n), set(), []
    try:
        while True:
            finished = writer.poll() is not None
            reader.refresh()
            visible = {k for k in keys if bytes.fromhex(k) in reader._index}
            assert all(np.array_equal(reader.get(k, 512), _vec(k, 512)) for k in visible - checked)
            assert len(visible) % 40 == 0        # whole shards only
            checked |= visible
            seen.append(len(visible))
            if finished:
                break
            time.sleep(0.02)
    finally:
        writer.wait(timeout=120)
    assert writer.returncode == 0 and seen[-1] == n and seen == sorted(seen)
    assert reader.corrupt == 0 and "unreadable" not in caplog.text


def test_info_summarises_a_cache_folder_without_changing_it(tmp_path, capsys):
    from recbole_reveal.commands.fve_cache import main

    root = str(tmp_path / "cache")
    keys = _keys(5)
    with EmbeddingCache(root) as cache:
        for k in keys:
            cache.put(k, _vec(k), {"prompt": f"p{k[:4]}"})
    before = sorted(os.listdir(os.path.join(root, "shards")))
    summary = main(["info", root])
    assert summary["entries"] == 5 and summary["shard_files"] == len(before) and summary["unreadable_shards"] == 0
    assert f"{root}: 5 entries in {len(before)} shard files" in capsys.readouterr().out
    assert sorted(os.listdir(os.path.join(root, "shards"))) == before
    with pytest.raises(SystemExit):
        main(["migrate", root])                 # the per-item layout of 0.1.0 previews is gone, and its command


def test_image_digests_hash_in_threads_and_notice_changed_files(tmp_path):
    import hashlib

    from recbole_reveal.fve.encoding.cache.digests import image_digests

    paths = []
    for k in range(20):
        p = tmp_path / f"{k}.bin"
        p.write_bytes(os.urandom(3000 + k))
        paths.append(str(p))
    (tmp_path / "empty.bin").write_bytes(b"")
    os.makedirs(tmp_path / "adir")
    extra = [str(tmp_path / "gone.bin"), "", str(tmp_path / "empty.bin"), str(tmp_path / "adir")]
    got = image_digests(paths + extra, workers=4)
    assert got[:20] == [(hashlib.sha256(open(p, "rb").read()).hexdigest(), None) for p in paths]
    assert got[20:] == [(None, "file not found"), (None, "no image path"), (None, "empty file"),
                        (None, "unreadable: Is a directory")]
    assert image_digests(paths, workers=1) == got[:20]
    with open(paths[3], "r+b") as f:                             # same size, new bytes, new times
        f.write(b"changed!")
    os.utime(paths[3], ns=(1, 1))
    assert image_digests([paths[3]])[0][0] == hashlib.sha256(open(paths[3], "rb").read()).hexdigest()


def test_the_vision_cache_on_disk_keeps_to_its_size_limit_evicting_the_least_recently_used(tmp_path):
    import torch

    from recbole_reveal.fve.encoding.cache.vision import VisionFeatureCache, VisionFeatures

    def feats(k):
        return VisionFeatures(torch.full((16, 32), float(k)), [], (1, 8, 8))

    folder = str(tmp_path / "vc")
    probe = VisionFeatureCache(max_bytes=0, directory=str(tmp_path / "probe"))
    probe.put("00" * 32, feats(0))
    size = os.path.getsize(probe._path("00" * 32))
    cache = VisionFeatureCache(max_bytes=0, directory=folder, max_disk_bytes=int(4.5 * size))
    keys = [f"{k:02x}" * 32 for k in range(1, 8)]
    for n, key in enumerate(keys[:4]):
        cache.put(key, feats(n))
        os.utime(cache._path(key), ns=(10**9 * n, 10**9 * n))    # distinct, ordered use times
    assert cache.get(keys[0]) is not None                          # a disk hit refreshes it
    for key in keys[4:]:
        cache.put(key, feats(9))
    on_disk = {k for k in keys if os.path.isfile(cache._path(k))}
    total = sum(os.path.getsize(cache._path(k)) for k in on_disk)
    assert total <= 4.5 * size and cache.evicted >= 2
    assert keys[0] in on_disk and keys[1] not in on_disk and keys[6] in on_disk
    assert torch.equal(VisionFeatureCache(directory=folder).get(keys[0]).pooler, feats(0).pooler)
