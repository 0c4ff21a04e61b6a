"""Attention heatmaps (paper Fig. 3) on the real Qwen-VL classes (tiny random weights, real files):
the map is the plain transformers attention row laid out on the processor's patch grid, it depends
on the prompt, and the CLI writes a PNG of the promised size."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from recbole_reveal.infra.errors import ConfigError
from recbole_reveal.commands.fve_attention import main
from recbole_reveal.fve.attention import PAD_PX, TITLE_PX, patch_attention, render_heatmaps, tokens_to_grid, upsample
from recbole_reveal.fve.prompts.records import write_prompts
from recbole_reveal.fve.vlm.load import load_vlm
from recbole_reveal.testing.vlms import build_tiny_qwen2_5_vl, build_tiny_qwen3_vl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_IMAGE = os.path.join(ROOT, "dataset_atomic", "synthetic-demo", "images", "i0003.png")
BUDGET = dict(min_pixels=56 * 56, max_pixels=112 * 112)
PROMPT = "An item image of a Backpacks. Item name: Vertex backpack ZH-224. Users often mention: blue, sturdy."
REFINED = "Focus on the stripes, the zipper pockets and the blue colour of the straps."


@pytest.fixture(scope="module")
def vlm_path(tmp_path_factory):
    return build_tiny_qwen2_5_vl(str(tmp_path_factory.mktemp("vlm") / "tiny"))


@pytest.fixture(scope="module")
def vlm(vlm_path):
    return load_vlm(vlm_path, device="cpu", attn_implementation="eager")


@pytest.fixture(scope="module")
def image():
    return Image.open(DEMO_IMAGE).convert("RGB").resize((168, 84))    # not square


def _hf_attention_row(vlm, image, prompt):
    """The last token's final-layer attention, heads averaged, at the image-pad positions, computed
    the plain transformers way (processor + full model forward), for the [image, prompt] turn."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    chat = vlm.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    batch = vlm.processor(text=[chat], images=[image], return_tensors="pt",
                          images_kwargs={"size": {"shortest_edge": BUDGET["min_pixels"],
                                                  "longest_edge": BUDGET["max_pixels"]}})
    with torch.no_grad():
        att = vlm.model(**batch, output_attentions=True).attentions[-1][0, :, -1].mean(0)
    return att[batch["input_ids"][0] == vlm.model.config.image_token_id].numpy(), batch["image_grid_thw"][0]


def test_the_map_is_the_last_tokens_attention_on_the_patch_grid(vlm, image):
    result = patch_attention(vlm, image, PROMPT, **BUDGET)
    expected, grid = _hf_attention_row(vlm, image, PROMPT)
    assert result.grid_thw == tuple(int(g) for g in grid)
    m = result.merge_size
    assert result.attention.shape == (result.grid_thw[1] // m, result.grid_thw[2] // m)
    assert result.attention.shape[1] > result.attention.shape[0]      # a wide image gives a wide grid
    np.testing.assert_allclose(result.attention.ravel(), expected, atol=1e-6)
    assert np.all(result.attention >= 0)
    assert 0 < result.image_share <= 1 + 1e-6              # the rest of the attention is on text tokens
    assert result.layer == vlm.num_layers - 1 and result.query_token == "\u010a"   # "\n" after "assistant"


def test_the_map_depends_on_the_prompt_and_is_deterministic(vlm, image):
    a = patch_attention(vlm, image, PROMPT, **BUDGET).attention
    b = patch_attention(vlm, image, REFINED, **BUDGET).attention
    again = patch_attention(vlm, image, PROMPT, **BUDGET).attention
    assert np.abs(a - b).max() > 1e-4
    assert np.array_equal(a, again)


def test_tokens_follow_the_image_processors_patch_order(vlm):
    """A left-to-right brightness ramp: the per-token mean pixel, laid out by tokens_to_grid, must rise
    along the columns and stay flat down the rows (and the transpose for a top-to-bottom ramp)."""
    ramp = np.tile(np.linspace(0, 255, 224, dtype=np.float64), (112, 1))
    for img, axis in ((ramp, 1), (ramp.T[:, :112], 0)):
        pil = Image.fromarray(np.stack([img] * 3, -1).astype(np.uint8))
        out = vlm.image_processor(images=[pil], return_tensors="pt",
                                  size={"shortest_edge": 56 * 56, "longest_edge": 224 * 112})
        grid = tuple(int(g) for g in out["image_grid_thw"][0])
        m = int(vlm.image_processor.merge_size)
        per_token = out["pixel_values"].reshape(-1, m * m, out["pixel_values"].shape[1]).mean((1, 2)).numpy()
        mapped = tokens_to_grid(per_token, grid, m)
        assert mapped.shape == (grid[1] // m, grid[2] // m)
        along = np.diff(mapped, axis=axis)
        across = np.diff(mapped, axis=1 - axis)
        assert np.all(along > 0.05) and np.abs(across).max() < 1e-4, (axis, mapped)


def test_tokens_to_grid_rejects_a_wrong_count():
    with pytest.raises(ValueError, match="expected 8"):
        tokens_to_grid(np.ones(7), (1, 4, 8), 2)


def test_a_model_without_eager_attention_is_a_clear_error(vlm_path, image):
    sdpa = load_vlm(vlm_path, device="cpu")
    with pytest.raises(ConfigError, match="attn_implementation='eager'"):
        patch_attention(sdpa, image, PROMPT, **BUDGET)


def test_qwen3_vl(tmp_path, image):
    vlm3 = load_vlm(build_tiny_qwen3_vl(str(tmp_path / "tiny3")), device="cpu", attn_implementation="eager")
    a = patch_attention(vlm3, image, PROMPT, min_pixels=64 * 64, max_pixels=128 * 128)
    b = patch_attention(vlm3, image, REFINED, min_pixels=64 * 64, max_pixels=128 * 128)
    m = a.merge_size
    assert a.attention.shape == (a.grid_thw[1] // m, a.grid_thw[2] // m)
    assert 0 < a.image_share <= 1 + 1e-6
    assert np.abs(a.attention - b.attention).max() > 1e-4


def test_upsample_keeps_the_layout():
    att = np.array([[0.0, 1.0], [0.0, 1.0]])
    big = upsample(att, (40, 20))                           # (width, height)
    assert big.shape == (20, 40)
    assert big[:, :10].max() < 0.1 and big[:, -10:].min() > 0.9


def _panels(path, n, panel_px):
    png = Image.open(path)
    assert png.format == "PNG" and png.size == (n * panel_px, panel_px + TITLE_PX)
    pixels = np.asarray(png.convert("RGB"), dtype=np.int16)
    inner = slice(TITLE_PX + PAD_PX + 2, TITLE_PX + panel_px - PAD_PX - 2)
    return [pixels[inner, k * panel_px + PAD_PX + 2:(k + 1) * panel_px - PAD_PX - 2] for k in range(n)]


def test_render_writes_a_png_of_the_promised_size(vlm, image, tmp_path):
    results = [patch_attention(vlm, image, q, **BUDGET) for q in (PROMPT, REFINED, PROMPT)]
    path = render_heatmaps(image, results, str(tmp_path / "out" / "heat.png"), labels=["a", "b", "c"], panel_px=160)
    first, second, third = _panels(path, 3, 160)
    assert np.abs(first - second).mean() > 1.0              # another prompt, another overlay
    assert np.array_equal(first, third)


def test_cli_with_image_and_prompts(vlm_path, tmp_path, capsys):
    out, arrays = str(tmp_path / "heat.png"), str(tmp_path / "heat.npz")
    rc = main(["--vlm_path", vlm_path, "--image", DEMO_IMAGE, "--prompt", PROMPT, "--prompt", REFINED,
               "--out", out, "--arrays", arrays, "--panel_px", "200", "--device", "cpu",
               "--min_pixels", str(BUDGET["min_pixels"]), "--max_pixels", str(BUDGET["max_pixels"])])
    assert rc == 0 and "wrote" in capsys.readouterr().out
    _panels(out, 2, 200)
    saved = np.load(arrays)
    assert list(saved["prompts"]) == [PROMPT, REFINED]
    vlm = load_vlm(vlm_path, device="cpu", attn_implementation="eager")
    expected = patch_attention(vlm, Image.open(DEMO_IMAGE), REFINED, **BUDGET).attention
    np.testing.assert_allclose(saved["attention_1"], expected, atol=1e-7)


def test_cli_reads_the_prompts_of_fve_cycles(vlm_path, tmp_path, capsys):
    data = tmp_path / "data"
    (data / "shop" / "images").mkdir(parents=True)
    Image.open(DEMO_IMAGE).save(data / "shop" / "images" / "a.png")
    (data / "shop" / "shop.item").write_text("item_id:token\timage:token\na\timages/a.png\nb\timages/b.png\n")
    fve = data / "shop" / "features" / "fve"
    for x, prompt in ((0, PROMPT), (1, PROMPT + " More."), (2, REFINED)):
        write_prompts(str(fve / f"prompts_cycle_{x}.jsonl"),
                      [{"item_id": "a", "prompt": prompt}, {"item_id": "b", "prompt": "other"}])
    arrays = str(tmp_path / "cycles.npz")
    common = ["--vlm_path", vlm_path, "--data_path", str(data), "--dataset", "shop", "--device", "cpu",
              "--panel_px", "128", "--max_pixels", str(BUDGET["max_pixels"])]
    assert main(common + ["--item", "a", "--out", str(tmp_path / "c.png"), "--arrays", arrays]) == 0
    saved = np.load(arrays)
    assert list(saved["labels"]) == ["cycle 0", "cycle 2"]               # first and last written
    assert list(saved["prompts"]) == [PROMPT, REFINED]
    _panels(str(tmp_path / "c.png"), 2, 128)

    assert main(common + ["--item", "zz", "--out", str(tmp_path / "e.png")]) == 2
    assert "item 'zz' has no prompt" in capsys.readouterr().err
    assert main(common + ["--item", "a", "--cycles", "5", "--out", str(tmp_path / "e.png")]) == 2
    assert "cycle 5: no prompt file" in capsys.readouterr().err
    assert main(common + ["--item", "b", "--out", str(tmp_path / "e.png")]) == 2      # its image file is absent
    assert "image not found" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "e.png")


def test_cli_reads_the_runs_configuration_with_model(vlm_path, vlm, tmp_path, capsys):
    """--model/--dataset/--config_files: vlm_path, data_path, the pixel budget and the device come from the
    same configuration the FVE run reads (recbole_reveal.config), not from the CLI's own defaults."""
    data = tmp_path / "data"
    (data / "shop" / "images").mkdir(parents=True)
    Image.open(DEMO_IMAGE).save(data / "shop" / "images" / "a.png")
    (data / "shop" / "shop.item").write_text("item_id:token\timage:token\na\timages/a.png\n")
    (data / "shop" / "shop.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\nu\ta\t1\n")
    for x, prompt in ((0, PROMPT), (1, REFINED)):
        write_prompts(str(data / "shop" / "features" / "fve" / f"prompts_cycle_{x}.jsonl"),
                      [{"item_id": "a", "prompt": prompt}])
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"vlm_path: {vlm_path}\ndata_path: {data}\nfve_device: cpu\n"
                   f"fve_min_pixels: {BUDGET['min_pixels']}\nfve_max_pixels: {BUDGET['max_pixels']}\n")
    arrays = str(tmp_path / "run.npz")
    args = ["--model", "M3SRec_REVEAL", "--dataset", "shop", "--item", "a", "--panel_px", "96"]
    assert main(args + ["--config_files", str(cfg), "--out", str(tmp_path / "r.png"), "--arrays", arrays]) == 0
    expected = patch_attention(vlm, Image.open(DEMO_IMAGE), REFINED, **BUDGET).attention
    np.testing.assert_allclose(np.load(arrays)["attention_1"], expected, atol=1e-7)

    cfg.write_text(f"data_path: {data}\n")
    assert main(args + ["--config_files", str(cfg), "--out", str(tmp_path / "e.png")]) == 2
    assert "no vlm_path in the configuration of M3SRec_REVEAL" in capsys.readouterr().err
