"""Attention heatmaps of the VLM over an item image (paper Fig. 3): where the frozen VLM looks under a
prompt, e.g. cycle 0's prompt next to a refined one.

For one image and one prompt (:func:`patch_attention`):

1. the chat turn is built as FVE builds it (:meth:`ChatTurn.token_ids` under ``pooling``; the default
   ``last_token`` is the reference code's [image, prompt] turn plus the assistant header, so the last
   query token is the position the answer would be generated from and has seen image and prompt);
2. one forward pass of the language model with ``output_attentions`` (the VLM must be loaded with
   ``attn_implementation="eager"``: SDPA and flash kernels return no attention weights);
3. the attention row of the last token in decoder layer ``layer`` (default the final one), averaged
   over heads, is read at the ``<|image_pad|>`` positions: one value per merged patch, the share of the
   token's attention that lands on it (they sum to at most 1; the rest goes to text tokens);
4. the image-pad tokens are laid out row-major over the merged grid ``(grid_h / merge, grid_w / merge)``
   (:func:`tokens_to_grid`, the image processor's patch order), which covers the whole resized image.

:func:`render_heatmaps` draws one panel per prompt (the image, the map upsampled to the image size and
min-max normalised per panel as in the paper, a colormap on top, the prompt as a short title) and saves
a PNG of exactly ``n_panels * panel_px`` x ``panel_px + title_px`` pixels, headless (a pyplot-free
matplotlib ``Figure``, rendered by Agg).

Its command (:mod:`recbole_reveal.commands.fve_attention`)::

    python -m recbole_reveal.commands.fve_attention --vlm_path DIR --image IMG --prompt "..." --prompt "..." --out heat.png
    python -m recbole_reveal.commands.fve_attention --vlm_path DIR --dataset Sports --item B000XYZ --out heat.png
        # prompts of FVE cycles (default: the first and the last written) from
        # <data_path>/<dataset>/features/fve/prompts_cycle_<x>.jsonl, the image from <dataset>.item
    python -m recbole_reveal.commands.fve_attention --model M3SRec_REVEAL --dataset Sports --config_files run.yaml \
        --item B000XYZ --out heat.png
        # the run's own configuration (recbole_reveal.config): vlm_path, data_path, feature_dir,
        # fve_device, fve_dtype, fve_min_pixels, fve_max_pixels; an option given here wins

See docs/cost-and-heatmaps.md.
"""

import os
import textwrap
from dataclasses import dataclass

import numpy as np
import torch

from recbole_reveal.fve.encoding.chat import ChatTurn
from recbole_reveal.infra.errors import ConfigError

DEFAULT_POOLING = "last_token"
PANEL_PX, TITLE_PX, PAD_PX, DPI = 384, 72, 3, 100


@dataclass
class PatchAttention:
    """The last query token's attention over an image's merged patches under one prompt."""

    prompt: str
    attention: np.ndarray    # float64 [grid_h / merge, grid_w / merge]: head-averaged attention per patch
    grid_thw: tuple          # the image processor's (t, h, w) patch grid
    merge_size: int
    query_token: str         # the token whose attention row this is
    layer: int               # decoder layer (0-based)

    @property
    def image_share(self):
        """Share of the query token's attention on the image (the rest is on text tokens)."""
        return float(self.attention.sum())


def tokens_to_grid(values, grid_thw, merge_size):
    """Per-image-token ``values`` (the image-pad order) as a ``[h / merge, w / merge]`` map.

    The image processor emits patches as (t, h/merge, w/merge, merge, merge) and the vision merger
    turns each merge x merge block into one token, so the tokens run row-major over the merged grid;
    frames of a (never-used) multi-frame grid are summed.
    """
    t, h, w = (int(g) for g in grid_thw)
    m = int(merge_size)
    if h % m or w % m:
        raise ValueError(f"image grid {grid_thw} is not divisible by the merge size {m}")
    values = np.asarray(values, dtype=np.float64)
    if values.shape != (t * (h // m) * (w // m),):
        raise ValueError(f"{values.shape[0] if values.ndim == 1 else values.shape} image-token values for a "
                         f"{grid_thw} grid with merge {m}: expected {t * (h // m) * (w // m)}")
    return values.reshape(t, h // m, w // m).sum(0)


def _check_eager(vlm):
    impl = getattr(vlm.model.config.get_text_config(), "_attn_implementation", None)
    if impl != "eager":
        raise ConfigError(
            f"attention heatmaps need the VLM's attention weights, which only eager attention returns; this "
            f"model uses {impl!r}. Load it with load_vlm(path, attn_implementation='eager') "
            "(fve_attn_implementation: eager)")


@torch.inference_mode()
def patch_attention(vlm, image, prompt, pooling=DEFAULT_POOLING, layer=-1, min_pixels=None, max_pixels=None):
    """:class:`PatchAttention` of the PIL ``image`` under ``prompt`` (module docstring, steps 1-4).

    ``pooling`` picks the chat turn as in FVE (``last_token``: [image, prompt] + assistant header;
    ``image_after_prompt``: [prompt, image], FVE's default encoding order). ``layer`` indexes the
    decoder layers (-1 = the final one). ``min_pixels`` / ``max_pixels``: the pixel budget (default the
    folder's ``preprocessor_config.json``).
    """
    _check_eager(vlm)
    if not vlm.model_type.startswith("qwen"):
        raise ConfigError(f"attention heatmaps map image tokens onto Qwen-VL's patch grid; {vlm.model_type} is not "
                          "supported (use a Qwen2.5-VL / Qwen3-VL folder)")
    turn = ChatTurn(vlm, pooling=pooling, min_pixels=min_pixels, max_pixels=max_pixels)
    turn.check_prompt(prompt, "heatmap prompt")
    n_layers = vlm.num_layers
    if not -n_layers <= int(layer) < n_layers:
        raise ValueError(f"layer {layer} is out of range for a {n_layers}-layer model (-1 = the final layer)")
    layer = int(layer) % n_layers
    pixels = turn.pixel_inputs(image.convert("RGB"))
    grid = tuple(int(g) for g in pixels["image_grid_thw"][0])
    ids, _ = turn.token_ids(prompt, turn.n_image_tokens(grid))
    device = vlm.device
    input_ids = torch.tensor([ids], device=device)
    out = vlm.model.model(
        input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
        pixel_values=pixels["pixel_values"].to(device), image_grid_thw=pixels["image_grid_thw"].to(device),
        mm_token_type_ids=(input_ids == turn.image_id).long(), output_attentions=True, use_cache=False)
    if not out.attentions:
        raise RuntimeError("the model returned no attention weights (is its attention eager?)")
    row = out.attentions[layer][0, :, -1, :].float().mean(0).cpu().numpy()     # [seq]: heads averaged
    image_positions = np.asarray(ids) == turn.image_id
    return PatchAttention(prompt=prompt, attention=tokens_to_grid(row[image_positions], grid, turn.merge_size),
                          grid_thw=grid, merge_size=turn.merge_size,
                          query_token=vlm.tokenizer.convert_ids_to_tokens(ids[-1]), layer=layer)


def upsample(attention, size):
    """``attention`` ([rows, cols]) bilinearly resized to ``size`` = (width, height) of the image."""
    from PIL import Image

    width, height = size
    return np.asarray(Image.fromarray(np.asarray(attention, dtype=np.float32))   # float32 -> mode "F"
                      .resize((int(width), int(height)), Image.BILINEAR), dtype=np.float64)


def _normalise(values, low, high):
    return (values - low) / (high - low) if high > low else np.zeros_like(values)


def _short_title(text, width, lines=3):
    wrapped = textwrap.wrap(" ".join(text.split()), width=width) or [""]
    if len(wrapped) > lines:
        wrapped = wrapped[:lines]
        wrapped[-1] = wrapped[-1][: width - 1].rstrip() + "\u2026"
    return "\n".join(wrapped)


def render_heatmaps(image, results, out_path, labels=None, panel_px=PANEL_PX, title_px=TITLE_PX, cmap="jet",
                    alpha=0.5, shared_scale=False):
    """Save one panel per :class:`PatchAttention` in ``results`` side by side as a PNG of exactly
    ``len(results) * panel_px`` x ``panel_px + title_px`` pixels; returns ``out_path``.

    Each panel is the image with the upsampled attention on top, min-max normalised per panel (or
    over all panels with ``shared_scale``), titled ``label · share of attention on the image`` and the
    prompt, shortened.
    """
    from matplotlib.figure import Figure     # no pyplot: renders with Agg, no display, no global backend change

    if not results:
        raise ValueError("render_heatmaps needs at least one result")
    labels = list(labels) if labels is not None else [f"prompt {k + 1}" for k in range(len(results))]
    if len(labels) != len(results):
        raise ValueError(f"{len(labels)} labels for {len(results)} results")
    image = image.convert("RGB")
    maps = [upsample(r.attention, image.size) for r in results]
    low, high = (min(m.min() for m in maps), max(m.max() for m in maps)) if shared_scale else (None, None)
    width, height = len(results) * panel_px, panel_px + title_px
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    chars = max(12, int(panel_px / 6.2))
    for k, (result, heat, label) in enumerate(zip(results, maps, labels)):
        pad_x, pad_y = PAD_PX / width, PAD_PX / height          # a white gap between panels
        ax = fig.add_axes([k / len(results) + pad_x, pad_y, 1.0 / len(results) - 2 * pad_x,
                           panel_px / height - 2 * pad_y])
        ax.imshow(image)
        scaled = _normalise(heat, low, high) if shared_scale else _normalise(heat, heat.min(), heat.max())
        ax.imshow(scaled, cmap=cmap, alpha=alpha, vmin=0.0, vmax=1.0)
        ax.set_axis_off()
        title = f"{label} \u00b7 {100 * result.image_share:.0f}% of attention on the image\n"
        fig.text((k + 0.5) / len(results), 1.0 - 4.0 / height, title + _short_title(result.prompt, chars),
                 ha="center", va="top", fontsize=7.5, wrap=False)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    fig.savefig(out_path, dpi=DPI, format="png")
    return out_path


# ------------------------------------------------------------------------------------------------ CLI
def cycle_prompts(dataset, item, data_path="dataset_atomic", feature_dir=None, cycles=None):
    """``[(label, prompt)]`` of ``item`` in the FVE prompt files of ``cycles`` (default: the first and
    the last cycle written) and the item's image path (from ``<dataset>.item``, or ``None``)."""
    from recbole_reveal.fve.prompts.records import read_items, read_prompts

    dataset_dir = os.path.join(data_path, dataset)
    fve_dir = os.path.join(feature_dir or os.path.join(dataset_dir, "features"), "fve")
    written = sorted(int(name[len("prompts_cycle_"):-len(".jsonl")]) for name in
                     (os.listdir(fve_dir) if os.path.isdir(fve_dir) else [])
                     if name.startswith("prompts_cycle_") and name.endswith(".jsonl")
                     and name[len("prompts_cycle_"):-len(".jsonl")].isdigit())
    if not written:
        raise ConfigError(f"no FVE prompt files prompts_cycle_<x>.jsonl in {fve_dir}: run the FVE loop first "
                          "(run_recbole_reveal.py ... --vlm_path=DIR), or pass --image and --prompt")
    if cycles is None:
        cycles = sorted({written[0], written[-1]})
    out = []
    for x in cycles:
        path = os.path.join(fve_dir, f"prompts_cycle_{x}.jsonl")
        if x not in written:
            raise ConfigError(f"cycle {x}: no prompt file {path} (cycles written: {written})")
        prompts = {r["item_id"]: r["prompt"] for r in read_prompts(path)}
        if item not in prompts:
            raise ConfigError(f"item {item!r} has no prompt in {path}")
        out.append((f"cycle {x}", prompts[item]))
    image = None
    item_file = os.path.join(dataset_dir, f"{dataset}.item")
    if os.path.isfile(item_file):
        meta = {it.item_id: it for it in read_items(item_file)}
        if item in meta and meta[item].image:
            image = os.path.join(dataset_dir, meta[item].image)
    return out, image
