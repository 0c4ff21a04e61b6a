"""Gemma-3 and InternVL3 (paper Table 6) through FVE: tiny random folders of the real transformers classes,
loaded offline through load_vlm; prompt dependence, equality with the plain transformers computation,
padding/batching invariance, missing images, the critic's generation path, the released shapes."""

import socket

import numpy as np
import pytest
import torch
from PIL import Image

from recbole_reveal.fve.critic.generation.transformers_backend import TransformersGenerator, _stop_ids
from recbole_reveal.fve.encoding.encoder import FVEEncoder, ItemRequest
from recbole_reveal.fve.vlm.folder import VLMUnavailable, check_vlm_folder
from recbole_reveal.fve.vlm.load import load_vlm
from recbole_reveal.testing.vlms import (
    FAMILY_SHAPES, GEMMA3_TINY_TOKENS, build_tiny_gemma3, build_tiny_internvl, family_shape_config,
)

from helpers import demo_images, item_requests
PROMPT = "An item image of a Backpacks. Item name: Vertex backpack ZH-224. Users often mention: blue, sturdy."
OTHER = "An item image of a Backpacks. Item name: Vertex backpack ZH-224. Focus on the stripes and colour."
BUILDERS = {"gemma3": build_tiny_gemma3, "internvl": build_tiny_internvl}


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def vlm(request, tmp_path_factory):
    folder = BUILDERS[request.param](str(tmp_path_factory.mktemp("vlm") / request.param))
    return load_vlm(folder, device="cpu")


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    sizes = [(128, 128), (200, 100), (90, 160), (128, 128), (150, 150), (60, 120)]
    return demo_images(folder, sizes)


def _hf_embedding(vlm, image_path, prompt, image_first, images_kwargs):
    """The plain transformers computation: the family's processor on the chat text, the whole model forward
    (vision tower included), the mean of the last-layer states at the image tokens."""
    image, text = {"type": "image"}, {"type": "text", "text": prompt}
    messages = [{"role": "user", "content": [image, text] if image_first else [text, image]}]
    chat = vlm.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    batch = vlm.processor(text=[chat], images=[[Image.open(image_path).convert("RGB")]], return_tensors="pt",
                          add_special_tokens=False, images_kwargs=images_kwargs)
    batch.pop("num_patches", None)
    with torch.no_grad():
        hidden = vlm.model(**batch, output_hidden_states=True).hidden_states[-1][0]
    pooled = hidden[batch["input_ids"][0] == vlm.model.config.image_token_id].mean(0)
    return torch.nn.functional.normalize(pooled, dim=-1).numpy()


def test_folders_load_offline_as_the_real_classes(tmp_path, monkeypatch):
    """No socket is opened: local_files_only all the way (tokenizer, image processor, weights)."""
    from transformers import (
        Gemma3ForConditionalGeneration, Gemma3Processor, GemmaTokenizer, InternVLForConditionalGeneration,
        InternVLProcessor, Qwen2Tokenizer,
    )
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    gemma, internvl = build_tiny_gemma3(str(tmp_path / "g")), build_tiny_internvl(str(tmp_path / "i"))

    def no_network(*args, **kwargs):
        raise AssertionError("network access during load_vlm")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    g = load_vlm(gemma, device="cpu")
    assert type(g.model) is Gemma3ForConditionalGeneration and isinstance(g.processor, Gemma3Processor)
    assert isinstance(g.tokenizer, GemmaTokenizer) and isinstance(g.image_processor, Gemma3ImageProcessorPil)
    assert g.model_type == "gemma3" and g.hidden_size == 64 and not g.model.training
    i = load_vlm(internvl, device="cpu")
    assert type(i.model) is InternVLForConditionalGeneration and isinstance(i.processor, InternVLProcessor)
    assert i.processor.video_processor is None and isinstance(i.tokenizer, Qwen2Tokenizer)
    assert isinstance(i.image_processor, GotOcr2ImageProcessorPil) and i.model_type == "internvl"
    assert not any(p.requires_grad for m in (g.model, i.model) for p in m.parameters())
    with pytest.raises(ImportError):
        import torchvision  # noqa: F401  (why the processors are built from their PIL parts)


def test_chat_layout_is_the_released_one_with_the_prompt_before_the_image(vlm):
    enc = FVEEncoder(vlm)
    text = enc.turn.text("A red bag.", 2)
    if vlm.model_type == "gemma3":
        assert text == ("<bos><start_of_turn>user\nA red bag.\n\n<start_of_image><image_soft_token><image_soft_token>"
                        "<end_of_image>\n\n<end_of_turn>\n")
    else:
        assert text == "<|im_start|>user\nA red bag.<img><IMG_CONTEXT><IMG_CONTEXT></img>\n<|im_end|>\n"
    ids, positions = enc.turn.token_ids("A red bag.", 2)
    assert [ids[p] for p in positions] == [vlm.model.config.image_token_id] * 2
    assert ids.count(vlm.tokenizer.bos_token_id) == (1 if vlm.model_type == "gemma3" else 0)  # no second <bos>


@pytest.mark.parametrize("pooling", ["image_after_prompt", "text_after_image", "last_token"])
def test_changing_only_the_prompt_changes_the_embedding(vlm, image_files, pooling):
    enc = FVEEncoder(vlm, pooling=pooling)
    a = enc.encode_items(item_requests(image_files[:3], [PROMPT] * 3)).matrix
    b = enc.encode_items(item_requests(image_files[:3], [OTHER] * 3)).matrix
    assert np.all((a * b).sum(1) < 1 - 1e-4), (a * b).sum(1)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert (a[0] * a[1]).sum() < 1 - 1e-4          # and on the image
    again = FVEEncoder(vlm, pooling=pooling).encode_items(item_requests(image_files[:3], [PROMPT] * 3)).matrix
    assert np.array_equal(a, again)


def test_reference_order_is_prompt_invariant_even_with_gemmas_bidirectional_image_block(vlm, image_files):
    """With the image first, no image token sees the prompt: Gemma-3's bidirectional mask spans the image
    tokens only, the rest stays causal."""
    enc = FVEEncoder(vlm, pooling="reference_image_first")
    a = enc.encode_items(item_requests(image_files[:2], [PROMPT] * 2)).matrix
    b = enc.encode_items(item_requests(image_files[:2], [OTHER] * 2)).matrix
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert (a[0] * a[1]).sum() < 1 - 1e-4       # still an image feature


@pytest.mark.parametrize("image_first", [False, True])
def test_matches_the_plain_transformers_computation(vlm, image_files, image_first):
    """Cached vision-tower output, our expansion and mask inputs (Gemma-3: token_type_ids, so the image tokens
    attend to each other as in training) give what the processor + full forward give."""
    enc = FVEEncoder(vlm, pooling="reference_image_first" if image_first else "image_after_prompt")
    got = enc.encode_items(item_requests(image_files[:2], [PROMPT, OTHER])).matrix
    kwargs = vlm.family.images_kwargs(vlm.image_processor, enc.min_pixels, enc.max_pixels)
    for k, prompt in enumerate([PROMPT, OTHER]):
        np.testing.assert_allclose(got[k], _hf_embedding(vlm, image_files[k], prompt, image_first, kwargs), atol=2e-5)


def test_gemma_image_tokens_attend_to_each_other(tmp_path, image_files):
    """Without token_type_ids Gemma-3 would run its image tokens causally: another embedding. Ours is the
    bidirectional one (it equals the processor path above, which passes token_type_ids)."""
    vlm = load_vlm(build_tiny_gemma3(str(tmp_path / "g")), device="cpu")
    enc = FVEEncoder(vlm)
    ours = enc.encode_items(item_requests(image_files[:1], [PROMPT])).matrix[0]
    ids, positions = enc.turn.token_ids(PROMPT, GEMMA3_TINY_TOKENS)
    (feats,) = enc.vision_cache.values()
    inputs = vlm.family.language_inputs(vlm, torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long),
                                        enc.turn.image_id, [feats])
    inputs.pop("token_type_ids")
    with torch.no_grad():
        causal = vlm.model.model(input_ids=torch.tensor([ids]), **inputs).last_hidden_state[0, positions].mean(0)
    causal = torch.nn.functional.normalize(causal, dim=-1).numpy()
    assert (ours * causal).sum() < 1 - 1e-4


def test_padding_side_and_batching_do_not_change_embeddings(vlm, image_files):
    prompts = [PROMPT + " Detail" + " more" * k + "." for k in range(len(image_files))]
    requests = item_requests(image_files, prompts)
    one = FVEEncoder(vlm, batch_size=1).encode_items(requests).matrix
    right = FVEEncoder(vlm, batch_size=4, padding_side="right").encode_items(requests).matrix
    left = FVEEncoder(vlm, batch_size=4, padding_side="left").encode_items(requests).matrix
    np.testing.assert_allclose(right, one, atol=1e-5)
    np.testing.assert_allclose(left, one, atol=1e-5)


def test_missing_images_get_fallback_rows(vlm, image_files, tmp_path):
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not an image")
    requests = [ItemRequest("ok", image_files[0], PROMPT), ItemRequest("gone", str(tmp_path / "nope.png"), PROMPT),
                ItemRequest("garbage", str(garbage), PROMPT), ItemRequest("ok2", image_files[1], OTHER)]
    result = FVEEncoder(vlm).encode_items(requests)
    assert result.missing == {"gone": "file not found", "garbage": result.missing["garbage"]}
    assert result.missing["garbage"].startswith("not a decodable image")
    assert not result.matrix[1:3].any() and result.encoded == ["ok", "ok2"]
    alone = FVEEncoder(vlm).encode_items([requests[0], requests[3]]).matrix
    np.testing.assert_allclose(result.matrix[[0, 3]], alone, atol=1e-6)


def test_internvl_pixel_budget_sets_the_tiles(tmp_path, image_files):
    vlm = load_vlm(build_tiny_internvl(str(tmp_path / "i"), max_patches=4), device="cpu")
    tile = 32 * 32
    one = FVEEncoder(vlm, max_pixels=tile)
    four = FVEEncoder(vlm, max_pixels=4 * tile)
    wide = item_requests([image_files[1]], [PROMPT])             # 200 x 100: 2 x 1 tiles + thumbnail
    a, b = one.encode_items(wide).matrix, four.encode_items(wide).matrix
    (fa,), (fb,) = one.vision_cache.values(), four.vision_cache.values()
    assert fa.grid == (1,) and fa.pooler.shape[0] == 16
    assert fb.grid[0] > 1 and fb.pooler.shape[0] == 16 * fb.grid[0]
    assert (a * b).sum() < 1 - 1e-4
    default = FVEEncoder(vlm)                                 # fve_max_pixels: ~ -> the folder's max_patches
    assert default.max_pixels == 4 * tile


def test_gemma_ignores_the_pixel_budget(tmp_path, image_files):
    vlm = load_vlm(build_tiny_gemma3(str(tmp_path / "g")), device="cpu")
    small = FVEEncoder(vlm, min_pixels=16, max_pixels=32 * 32).encode_items(item_requests(image_files[:1], [PROMPT]))
    large = FVEEncoder(vlm, min_pixels=16, max_pixels=512 * 512).encode_items(item_requests(image_files[:1], [PROMPT]))
    np.testing.assert_allclose(small.matrix, large.matrix, atol=1e-6)


def test_critic_generation_runs_on_both_families(vlm, image_files):
    """The transformers critic backend: a batch of two turns [instruction, image], one <bos> (Gemma), the
    family's end-of-turn token stops decoding; the same answers one item at a time."""
    images = [Image.open(p).convert("RGB") for p in image_files[:2]]
    texts = ["Assess the prompt and rewrite it.", "Rewrite: " + PROMPT]
    gen = TransformersGenerator(vlm, max_new_tokens=5, batch_size=2)
    both = gen.generate_texts(images, texts)
    assert len(both) == 2 and all(isinstance(t, str) and isinstance(f, bool) for t, f in both)
    single = [gen.generate_texts([im], [t])[0] for im, t in zip(images, texts)]
    assert [a for a, _ in single] == [a for a, _ in both]
    # the answers are those of a plain generate() on the turn tokenised with a single <bos>
    chat = vlm.processor.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": texts[0]},
                                                                           {"type": "image"}]}],
                                             tokenize=False, add_generation_prompt=True)
    batch = vlm.processor(text=[chat], images=[[images[0]]], return_tensors="pt", add_special_tokens=False,
                          images_kwargs=gen.images_kwargs)
    if vlm.model_type == "gemma3":
        bos = vlm.tokenizer.bos_token_id
        assert int((batch["input_ids"][0] == bos).sum()) == 1
        doubled = vlm.processor(text=[chat], images=[[images[0]]], return_tensors="pt", images_kwargs=gen.images_kwargs)
        assert int((doubled["input_ids"][0] == bos).sum()) == 2     # what the tokenizer's default would give
    stop, pad = _stop_ids(vlm)
    assert vlm.token_id(vlm.family.turn_end) in stop
    with torch.no_grad():
        out = vlm.model.generate(**batch, max_new_tokens=5, do_sample=False, eos_token_id=stop, pad_token_id=pad)
    row = out[0, batch["input_ids"].shape[1]:].tolist()
    cut = next((k for k, t in enumerate(row) if t in stop), len(row))
    assert vlm.tokenizer.decode(row[:cut], skip_special_tokens=False) == both[0][0]


def test_near_miss_folders_say_what_to_download(tmp_path):
    import json

    for model_type, hint in (("internvl_chat", "InternVL3-8B-hf"), ("gemma3_text", "gemma-3-4b-it")):
        folder = tmp_path / model_type
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"model_type": model_type}))
        with pytest.raises(VLMUnavailable, match=hint):
            check_vlm_folder(str(folder))


@pytest.mark.parametrize("shape,params", [
    ("gemma-3-4b", 4_300_079_472),      # keras-hub's gemma3_instruct_4b + 64 extra vocabulary rows x 2560
    ("gemma-3-12b", 12_187_325_040),    # keras-hub's gemma3_instruct_12b + 64 x 3840
    ("internvl3-8b", 7.94e9),           # InternVL3-8B model card
    ("internvl3-14b", 15.1e9),          # InternVL3-14B model card
])
def test_family_shapes_match_the_released_checkpoints(shape, params):
    from transformers import Gemma3ForConditionalGeneration, InternVLForConditionalGeneration

    cls = Gemma3ForConditionalGeneration if FAMILY_SHAPES[shape][0] == "gemma3" else InternVLForConditionalGeneration
    with torch.device("meta"):
        model = cls(family_shape_config(shape))
    n = sum(p.numel() for p in model.parameters())
    assert abs(n - params) / params < 0.005, n
