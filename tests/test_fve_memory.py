"""FVE memory at Yelp scale, checked at a small size: the keyword stage's memory per distinct
(item, word) pair stays bounded as items are added (allocations counted by tracemalloc, not timed),
and the VLM leaves its device while the backbone trains and comes back for the next encode/critic."""

import gc
import os
import tracemalloc
import weakref

import numpy as np
import pytest

from recbole_reveal.fve.config import fve_settings
from recbole_reveal.fve.encoding.build import build_fve_encoder
from recbole_reveal.fve.encoding.encoder import ItemRequest
from recbole_reveal.fve.encoding.residency import park_vlm, place_vlm, restore_vlm, stage_needs_vlm
from recbole_reveal.fve.prompts import keywords as prompts
from recbole_reveal.infra.errors import ConfigError
from recbole_reveal.testing.vlms import build_tiny_qwen2_5_vl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_IMAGES = os.path.join(ROOT, "dataset_atomic", "synthetic-demo", "images")
BYTES_PER_PAIR = 32      # the streaming counter needs about 13 (12 for the arrays, the rest per item)


def _write_reviews(path, n_items, reviews_per_item=10, words=30, vocab=4000, seed=0):
    """Yelp-shaped review text: Zipf-distributed words (about 200 distinct per item here), reviews of
    one item spread over the file as a user-ordered export has them."""
    rng = np.random.default_rng(seed)
    names = [f"w{k}q" for k in range(vocab)]
    p = 1.0 / np.arange(1, vocab + 1) ** 1.05
    ids = rng.choice(vocab, size=(n_items * reviews_per_item, words), p=p / p.sum())
    items = rng.permutation(np.repeat(np.arange(n_items), reviews_per_item))
    with open(path, "w", encoding="utf-8") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\treview:token_seq\n")
        for n, (item, row) in enumerate(zip(items, ids)):
            f.write(f"u{n % 1931}\ti{item}\t{n}\t{' '.join(names[k] for k in row)}\n")


def _keyword_stage_peak(path):
    """Peak bytes allocated while counting and ranking the keywords of ``path``; distinct pairs."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        counts = prompts.review_keyword_counts(path)
        keywords = counts.top(5)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert len(keywords) == len(counts)
    return peak, counts.n_pairs


def test_keyword_memory_per_item_word_pair_is_bounded(tmp_path, monkeypatch):
    """Doubling the items doubles the (item, word) pairs; the extra peak memory per extra pair stays
    under BYTES_PER_PAIR. The old reader (a Counter per item) needed about 80 per pair here. The
    merge buffer and the per-bucket scratch arrays are fixed-size at Yelp scale (4 M pairs, 1024 items);
    they are made small here so that the sizes measured are past them too."""
    monkeypatch.setattr(prompts._PairCounter.__init__, "__defaults__", (1 << 13, 32))
    small, large = str(tmp_path / "small.review"), str(tmp_path / "large.review")
    _write_reviews(small, 300)
    _write_reviews(large, 600)
    peak_small, pairs_small = _keyword_stage_peak(small)
    peak_large, pairs_large = _keyword_stage_peak(large)
    assert pairs_large > 1.8 * pairs_small > 40_000
    per_pair = (peak_large - peak_small) / (pairs_large - pairs_small)
    assert 0 < per_pair < BYTES_PER_PAIR, f"{per_pair:.1f} bytes per extra (item, word) pair"


# ---------------------------------------------------------------- the VLM between stages
@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    folder = build_tiny_qwen2_5_vl(str(tmp_path_factory.mktemp("vlm") / "tiny"))
    return fve_settings({"vlm_path": folder, "fve_device": "cpu", "fve_min_pixels": 56 * 56,
                         "fve_max_pixels": 112 * 112, "fve_preprocess_workers": 0})


def _requests(prompt="An item image of a mug. Focus on the handle."):
    return [ItemRequest(f"i{k}", os.path.join(DEMO_IMAGES, f"i{k:04d}.png"), prompt) for k in range(3)]


def test_a_released_vlm_is_freed_and_reloaded_giving_the_same_embeddings(settings):
    encoder = build_fve_encoder(settings)
    before = encoder.encode_items(_requests()).matrix
    model = weakref.ref(encoder.vlm.model)
    park_vlm(encoder.vlm, "free")
    gc.collect()
    assert encoder.vlm.model is None and model() is None     # nothing holds the weights any more
    park_vlm(encoder.vlm, "free")                             # parking twice is harmless
    restore_vlm(encoder.vlm, settings)
    assert encoder.vlm.model is not None and encoder.vision_cache.stats()["entries"] == 3   # vision cache kept
    encoder.vision_cache._memory.clear()                      # recompute everything with the reloaded model
    assert np.array_equal(encoder.encode_items(_requests()).matrix, before)


def test_auto_and_cpu_leave_a_cpu_vlm_in_place(settings):
    encoder = build_fve_encoder(settings)
    model = encoder.vlm.model
    for mode in ("auto", "cpu", "keep"):
        park_vlm(encoder.vlm, mode)
        assert encoder.vlm.model is model and getattr(encoder.vlm, "_parked", None) is None
    with pytest.raises(ValueError, match="fve_vlm_offload"):
        park_vlm(encoder.vlm, "disk")


def test_stages_that_need_the_vlm_get_it_back(settings):
    from types import SimpleNamespace

    s = dict(settings, fve_vlm_offload="free")
    ctx = SimpleNamespace(_encoder=build_fve_encoder(s), settings=s)
    assert [stage_needs_vlm(n, s) for n in ("init", "cycle_0/encode", "cycle_0/train", "cycle_0/feedback",
                                            "cycle_0/critic")] == [False, True, False, False, True]
    assert not stage_needs_vlm("cycle_0/critic", dict(s, fve_generation_backend="endpoint"))
    assert not stage_needs_vlm("cycle_1/encode", dict(s, fve_num_processes=2))   # workers load their own
    place_vlm(ctx, "cycle_0/train")
    assert ctx._encoder.vlm.model is None
    place_vlm(ctx, "cycle_0/feedback")
    assert ctx._encoder.vlm.model is None
    place_vlm(ctx, "cycle_0/critic")
    assert ctx._encoder.vlm.model is not None and ctx._encoder.vlm._parked is None
    place_vlm(SimpleNamespace(_encoder=None, settings=s), "cycle_0/train")   # no VLM loaded yet: nothing to do


def test_a_vlm_folder_changed_meanwhile_is_refused_on_reload(settings, tmp_path):
    import shutil

    folder = str(tmp_path / "copy")
    shutil.copytree(settings["vlm_path"], folder)
    s = dict(settings, vlm_path=folder)
    encoder = build_fve_encoder(s)
    park_vlm(encoder.vlm, "free")
    build_tiny_qwen2_5_vl(folder, seed=3)                    # other weights in the same folder
    with pytest.raises(ConfigError, match="changed while this FVE run was going"):
        restore_vlm(encoder.vlm, s)


def test_the_loop_releases_the_vlm_for_training_and_reloads_it(tmp_path, caplog):
    """A 2-cycle run with fve_vlm_offload: free and a critic whose rewrites are accepted: the VLM is
    released before each training and reloaded for the critic, whose rewrites cycle 1 then encodes
    with the reloaded model exactly as a fresh encoder does. The run also fills the keyword cache and
    reports each FVE stage's peak RSS."""
    import json
    import logging

    from recbole_reveal.data.feature_store import load_item_features, save_item_features
    from recbole_reveal.data.synthetic import generate_dataset
    from recbole_reveal.fve.loop.run import run_fve
    from recbole_reveal.fve.prompts.records import read_items, read_prompts
    from recbole_reveal.testing.vlms import build_scripted_qwen2_5_vl

    caplog.set_level(logging.INFO, logger="recbole_reveal.fve")
    new_prompt = "An item image. Describe its material and colour."
    vlm_folder = build_scripted_qwen2_5_vl(str(tmp_path / "vlm"), ["ANALYSIS:", " Material unseen.\n",
                                                                    "NEW_PROMPT:", " " + new_prompt])
    generate_dataset(str(tmp_path / "data"), "mem", n_users=40, n_items=24, seed=3, image_size=48)
    items = read_items(str(tmp_path / "data" / "mem" / "mem.item"))
    tokens = [it.item_id for it in items]
    save_item_features(str(tmp_path / "features"), "text_minilm", tokens,
                       np.random.default_rng(0).normal(size=(len(tokens), 8)).astype(np.float32))
    cfg = {"data_path": str(tmp_path / "data"), "feature_dir": str(tmp_path / "features"), "vlm_path": vlm_folder,
           "fve_device": "cpu", "fve_cycles": 2, "fve_preprocess_workers": 0, "fve_vlm_offload": "free",
           "fve_min_pixels": 56 * 56, "fve_max_pixels": 56 * 56, "fve_rewrite_max_new_tokens": 12,
           "fve_rewrite_batch_size": 8, "epochs": 1, "hidden_size": 16, "inner_size": 32, "n_heads": 2,
           "train_batch_size": 128, "eval_batch_size": 256, "MAX_ITEM_LIST_LENGTH": 10, "show_progress": False}
    out = run_fve("M3SRec_REVEAL", "mem", config_dict=cfg)
    assert caplog.text.count("VLM released while the backbone runs") == 2          # before each training
    assert caplog.text.count(f"loaded VLM {vlm_folder}") == 2                      # first encode, then the critic
    c0, c1 = out["table"]
    assert c0["critic"]["accepted"] == c1["items_reencoded"] == 6                 # ceil(0.25 * 24)
    prompts1 = {r["item_id"]: r["prompt"] for r in read_prompts(str(tmp_path / "features" / "fve" /
                                                                       "prompts_cycle_1.jsonl"))}
    rewritten = [t for t in tokens if prompts1[t] == new_prompt]
    fresh = build_fve_encoder(fve_settings(cfg)).encode_items(
        [ItemRequest(t, str(tmp_path / "data" / "mem" / items[tokens.index(t)].image), new_prompt) for t in rewritten])
    names, matrix = load_item_features(str(tmp_path / "features"), "fve/cycle_1")
    rows = dict(zip(names, matrix))
    assert all(np.array_equal(rows[t], v) for t, v in zip(rewritten, fresh.matrix))
    assert os.listdir(str(tmp_path / "features" / "fve" / "cache" / "keywords"))   # the shared keyword cache
    cost = json.load(open(os.path.join(out["run_dir"], "cost.json")))
    assert {"fve_init", "fve_encode", "fve_feedback", "fve_critic", "backbone"} <= set(cost["peak_rss_mb_by_stage"])
