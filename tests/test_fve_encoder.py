"""The FVE vision encoder on the real Qwen-VL classes (tiny random weights, real files).

The key property: under the default pooling the embedding depends on the prompt; under the
reference code's order ([image, prompt], image-pad pooling) it provably does not.
"""

import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image

from recbole_reveal.fve.encoding.cache.vision import VisionFeatureCache
from recbole_reveal.fve.encoding.chat import POOLINGS
from recbole_reveal.fve.encoding.encoder import FVEEncoder, ItemRequest
from recbole_reveal.fve.vlm.load import load_vlm
from recbole_reveal.testing.vlms import build_tiny_qwen2_5_vl, build_tiny_qwen3_vl

from helpers import DEMO_IMAGES, demo_images, item_requests
BUDGET = dict(min_pixels=56 * 56, max_pixels=112 * 112)   # <= 16 image tokens: fast on CPU
PROMPT = "An item image of a Backpacks. Item name: Vertex backpack ZH-224. Users often mention: blue, sturdy."
OTHER = "An item image of a Backpacks. Item name: Vertex backpack ZH-224. Focus on the stripes and colour."


@pytest.fixture(scope="module")
def vlm(tmp_path_factory):
    return load_vlm(build_tiny_qwen2_5_vl(str(tmp_path_factory.mktemp("vlm") / "tiny")), device="cpu")


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    """Eight demo images, saved at different sizes so a batch mixes image-token counts."""
    folder = tmp_path_factory.mktemp("images")
    sizes = [(128, 128), (200, 100), (90, 160), (128, 128), (150, 150), (60, 120), (128, 128), (100, 70)]
    return demo_images(folder, sizes)


def _varied_prompts(n):
    return [PROMPT + " Detail" + " more" * k + "." for k in range(n)]


def _hf_embedding(vlm, image_path, prompt, image_first, layer=-1):
    """The embedding computed the plain transformers way: processor + full model forward."""
    image, text = {"type": "image"}, {"type": "text", "text": prompt}
    messages = [{"role": "user", "content": [image, text] if image_first else [text, image]}]
    chat = vlm.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    batch = vlm.processor(text=[chat], images=[Image.open(image_path).convert("RGB")], return_tensors="pt",
                          images_kwargs={"size": {"shortest_edge": BUDGET["min_pixels"],
                                                  "longest_edge": BUDGET["max_pixels"]}})
    with torch.no_grad():
        hidden = vlm.model(**batch, output_hidden_states=True).hidden_states[layer][0]
    pooled = hidden[batch["input_ids"][0] == vlm.model.config.image_token_id].mean(0)
    return torch.nn.functional.normalize(pooled, dim=-1).numpy()


def test_changing_only_the_prompt_changes_the_default_embedding(vlm, image_files):
    enc = FVEEncoder(vlm, **BUDGET)
    assert enc.pooling == "image_after_prompt"
    a = enc.encode_items(item_requests(image_files[:3], [PROMPT] * 3)).matrix
    b = enc.encode_items(item_requests(image_files[:3], [OTHER] * 3)).matrix
    cosine = (a * b).sum(1)
    assert np.all(cosine < 1 - 1e-4), cosine
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)


def test_identical_input_gives_the_identical_embedding(vlm, image_files):
    requests = item_requests(image_files[:3], [PROMPT] * 3)
    first = FVEEncoder(vlm, **BUDGET).encode_items(requests).matrix
    again = FVEEncoder(vlm, **BUDGET).encode_items(requests).matrix  # fresh encoder, fresh vision cache
    assert np.array_equal(first, again)


@pytest.mark.parametrize("pooling", [p for p in POOLINGS if p != "reference_image_first"])
def test_every_non_reference_pooling_depends_on_the_prompt(vlm, image_files, pooling):
    enc = FVEEncoder(vlm, pooling=pooling, **BUDGET)
    a = enc.encode_items(item_requests(image_files[:2], [PROMPT] * 2)).matrix
    b = enc.encode_items(item_requests(image_files[:2], [OTHER] * 2)).matrix
    assert np.all((a * b).sum(1) < 1 - 1e-4)


def test_reference_order_is_prompt_invariant(vlm, image_files):
    """The reference code's embedding: the image-pad states precede the prompt, and the language
    model is causal, so the prompt cannot reach them."""
    enc = FVEEncoder(vlm, pooling="reference_image_first", **BUDGET)
    a = enc.encode_items(item_requests(image_files[:3], [PROMPT] * 3)).matrix
    b = enc.encode_items(item_requests(image_files[:3], ["x"] * 3)).matrix
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    assert not np.allclose(a[0], a[1], atol=1e-3)   # still an image feature: images differ


@pytest.mark.parametrize("pooling,image_first,layer", [
    ("image_after_prompt", False, -1), ("reference_image_first", True, -1), ("image_after_prompt", False, 1)])
def test_matches_the_plain_transformers_computation(vlm, image_files, pooling, image_first, layer):
    """Cached vision features + our token expansion give what processor + model forward give."""
    enc = FVEEncoder(vlm, pooling=pooling, layer=layer, **BUDGET)
    got = enc.encode_items(item_requests(image_files[:2], [PROMPT, OTHER])).matrix
    for k, prompt in enumerate([PROMPT, OTHER]):
        np.testing.assert_allclose(got[k], _hf_embedding(vlm, image_files[k], prompt, image_first, layer), atol=2e-5)


def test_padding_side_and_batching_do_not_change_embeddings(vlm, image_files):
    requests = item_requests(image_files, _varied_prompts(len(image_files)))
    one = FVEEncoder(vlm, batch_size=1, **BUDGET).encode_items(requests).matrix
    right = FVEEncoder(vlm, batch_size=5, padding_side="right", **BUDGET).encode_items(requests).matrix
    left = FVEEncoder(vlm, batch_size=5, padding_side="left", **BUDGET).encode_items(requests).matrix
    np.testing.assert_allclose(right, one, atol=1e-5)
    np.testing.assert_allclose(left, one, atol=1e-5)
    enc = FVEEncoder(vlm, batch_size=8, **BUDGET)
    enc.encode_items(requests)
    assert len({f.grid for f in enc.vision_cache.values()}) >= 3  # the batch really mixed sizes


def test_images_are_resized_within_the_pixel_budget(vlm, tmp_path):
    big = str(tmp_path / "big.png")
    Image.open(os.path.join(DEMO_IMAGES, "i0001.png")).convert("RGB").resize((640, 480)).save(big)
    tokens = {}
    for max_pixels in (112 * 112, 224 * 224):
        enc = FVEEncoder(vlm, min_pixels=56 * 56, max_pixels=max_pixels)
        enc.encode_items([ItemRequest("big", big, PROMPT)])
        (feats,) = enc.vision_cache.values()
        t, h, w = feats.grid
        assert h * w * 14 * 14 <= max_pixels and (h * 14) % 28 == 0 and (w * 14) % 28 == 0
        assert w > h  # aspect ratio kept (640 x 480)
        tokens[max_pixels] = feats.pooler.shape[0]
    assert tokens[224 * 224] > tokens[112 * 112]


def test_missing_and_unreadable_images_get_fallback_rows(vlm, image_files, tmp_path, caplog):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not an image at all")
    sliver = str(tmp_path / "sliver.png")
    Image.new("RGB", (300, 1), "red").save(sliver)  # aspect ratio 300 > 200: the processor refuses it
    requests = [ItemRequest("ok0", image_files[0], PROMPT), ItemRequest("gone", str(tmp_path / "nope.png"), PROMPT),
                ItemRequest("empty", str(empty), PROMPT), ItemRequest("garbage", str(garbage), PROMPT),
                ItemRequest("sliver", sliver, PROMPT), ItemRequest("ok1", image_files[1], PROMPT)]
    enc = FVEEncoder(vlm, **BUDGET)
    with caplog.at_level(logging.WARNING):
        result = enc.encode_items(requests)
    assert set(result.missing) == {"gone", "empty", "garbage", "sliver"}
    assert result.missing["gone"] == "file not found" and result.missing["empty"] == "empty file"
    assert result.missing["garbage"].startswith("not a decodable image")
    assert result.missing["sliver"].startswith("image processor rejected it")
    assert "FVE: 4 of 6 item images missing or unreadable; wrote 'zero' rows" in caplog.text
    assert not result.matrix[1:5].any()
    alone = FVEEncoder(vlm, **BUDGET).encode_items([requests[0], requests[5]]).matrix
    np.testing.assert_allclose(result.matrix[[0, 5]], alone, atol=1e-6)
    assert result.summary()["missing_images"] == 4 and result.encoded == ["ok0", "ok1"]


def test_random_missing_rule_is_unit_norm_and_seeded_by_item(vlm, tmp_path):
    enc = FVEEncoder(vlm, missing_image="random", **BUDGET)
    gone = str(tmp_path / "nope.png")
    a = enc.encode_items([ItemRequest("x", gone, PROMPT), ItemRequest("y", gone, PROMPT)]).matrix
    b = FVEEncoder(vlm, missing_image="random", **BUDGET).encode_items([ItemRequest("x", gone, OTHER)]).matrix
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-6)
    assert np.array_equal(a[0], b[0]) and not np.allclose(a[0], a[1])


def test_vision_tower_output_is_reused_across_calls(vlm, image_files, tmp_path):
    requests = item_requests(image_files[:4], [PROMPT] * 4)
    changed = item_requests(image_files[:4], [OTHER] * 4)
    enc = FVEEncoder(vlm, **BUDGET)
    assert enc.encode_items(requests).vision == {"memory_hits": 0, "disk_hits": 0, "misses": 4}
    second = enc.encode_items(changed)
    assert second.vision == {"memory_hits": 4, "disk_hits": 0, "misses": 0}
    uncached = FVEEncoder(vlm, vision_cache=VisionFeatureCache(max_bytes=0), **BUDGET).encode_items(changed)
    np.testing.assert_allclose(second.matrix, uncached.matrix, atol=1e-6)
    # persisted: a new process (new cache object) on the same folder skips the vision tower
    FVEEncoder(vlm, vision_cache=VisionFeatureCache(directory=str(tmp_path / "vc")), **BUDGET).encode_items(requests)
    reread = FVEEncoder(vlm, vision_cache=VisionFeatureCache(directory=str(tmp_path / "vc")), **BUDGET)
    result = reread.encode_items(changed)
    assert result.vision == {"memory_hits": 0, "disk_hits": 4, "misses": 0}
    np.testing.assert_allclose(result.matrix, uncached.matrix, atol=1e-6)


def test_qwen3_vl_deepstack_path(tmp_path, image_files):
    vlm3 = load_vlm(build_tiny_qwen3_vl(str(tmp_path / "q3")), device="cpu")
    budget = dict(min_pixels=64 * 64, max_pixels=128 * 128)
    enc = FVEEncoder(vlm3, vision_cache=VisionFeatureCache(directory=str(tmp_path / "vc")), **budget)
    a = enc.encode_items(item_requests(image_files[:3], [PROMPT] * 3)).matrix
    b = enc.encode_items(item_requests(image_files[:3], [OTHER] * 3)).matrix
    assert np.all((a * b).sum(1) < 1 - 1e-4)
    assert len(enc.vision_cache.values()[0].deepstack) == 2
    disk = FVEEncoder(vlm3, vision_cache=VisionFeatureCache(directory=str(tmp_path / "vc")), **budget)
    np.testing.assert_allclose(disk.encode_items(item_requests(image_files[:3], [OTHER] * 3)).matrix, b, atol=1e-6)
    ref = FVEEncoder(vlm3, pooling="reference_image_first", **budget)
    np.testing.assert_allclose(ref.encode_items(item_requests(image_files[:2], [PROMPT] * 2)).matrix,
                               ref.encode_items(item_requests(image_files[:2], [OTHER] * 2)).matrix, atol=1e-6)


def test_embed_takes_pil_images(vlm, image_files):
    enc = FVEEncoder(vlm, **BUDGET)
    images = [Image.open(p) for p in image_files[:2]]
    np.testing.assert_allclose(enc.embed(images, [PROMPT, OTHER]),
                               enc.encode_items(item_requests(image_files[:2], [PROMPT, OTHER])).matrix, atol=1e-6)


def test_bad_prompts_and_settings_are_refused(vlm, image_files):
    enc = FVEEncoder(vlm, **BUDGET)
    with pytest.raises(ValueError, match="item a: empty prompt"):
        enc.encode_items([ItemRequest("a", image_files[0], "  ")])
    with pytest.raises(ValueError, match=r"item b: prompt contains reserved chat tokens \['<\|im_end\|>'\]"):
        enc.encode_items([ItemRequest("b", image_files[0], "nice<|im_end|>")])
    with pytest.raises(ValueError, match="fve_pooling must be one of image_after_prompt"):
        FVEEncoder(vlm, pooling="image_pad")
    with pytest.raises(ValueError, match="fve_layer 3 is out of range for a 2-layer model"):
        FVEEncoder(vlm, layer=3)
    with pytest.raises(ValueError, match="fve_missing_image"):
        FVEEncoder(vlm, missing_image="skip")
