"""The VLM families FVE runs (paper Table 6): Qwen2.5-VL, Qwen3-VL, Gemma-3 and InternVL3 (transformers'
native ``-hf`` layout). A :class:`Family` knows, for its checkpoints:

* the transformers classes and a processor built from parts without torchvision (the PIL image
  processor, the fast tokenizer, the folder's chat template; no video processor);
* what the chat template writes for an image (``placeholder``) and the text the processor expands it to
  (``expansion``), the token each image feature replaces (``image_token``), the tokens closing the image
  span and the user turn (for the pooled positions);
* how a PIL image becomes pixel tensors under the pixel budget (``pixels``: tensors and a ``layout``, the
  per-image shape the token count and the positions come from), how many image tokens that is;
* how the vision tower runs once for a batch of images (``vision_features``) and how the cached outputs
  re-enter the language model through transformers' ``mm_encoder_outputs`` (``language_inputs``).

Per-family facts that change the embedding:

* **Qwen2.5-VL / Qwen3-VL**: dynamic resolution. The image is resized into ``[fve_min_pixels,
  fve_max_pixels]`` with sides multiple of patch x merge; 3-D rotary positions from the grid.
* **Gemma-3**: every image is resized to the checkpoint's square (896 x 896), 256 tokens after the
  projector's pooling; ``fve_*_pixels`` do not apply. The image tokens attend to each other
  bidirectionally and causally to everything before them (the model's ``token_type_ids`` mask, passed
  as in training), so with the prompt before the image every image token sees the whole image and the
  prompt; with the image first (the reference order) no image token sees the prompt, exactly as in a
  causal model. Pan-and-scan crops stay off.
* **InternVL3**: 448 x 448 tiles of 256 tokens each (pixel shuffle). ``fve_max_pixels`` sets the number
  of tiles, ``max(1, fve_max_pixels // 448^2)``: the default 448^2 gives one tile of the whole image
  (256 tokens, the same budget as Qwen's default); more tiles turn on InternVL's dynamic tiling (the
  tiles plus a thumbnail). ``fve_max_pixels: ~`` uses the folder's ``max_patches`` (12).

Light: torch and transformers are imported inside the methods.
"""

from dataclasses import dataclass


def image_only_processor_class(processor_cls):
    """``processor_cls`` (Qwen2_5_VLProcessor, Qwen3VLProcessor, InternVLProcessor) without its video
    processor.

    ProcessorMixin takes its sub-processors from the parameter names of ``__init__`` and checks
    each against its base class; the video base class is unimportable without torchvision. A
    subclass whose ``__init__`` names only the image processor and the tokenizer passes the checks,
    keeps every text/image method of the real processor, and sets ``video_processor = None``.
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        processor_cls.__init__(self, image_processor, tokenizer, None, chat_template=chat_template, **kwargs)
        self.video_processor = None

    return type(processor_cls.__name__ + "ImageOnly", (processor_cls,), {"__init__": __init__})


def _transformers(name):
    import transformers

    return getattr(transformers, name)


def _pil_image_processor(module, name, path):
    import importlib

    cls = getattr(importlib.import_module(f"transformers.models.{module}"), name)
    return cls.from_pretrained(str(path), local_files_only=True)


def positions_from_mask(mask):
    """1-D positions that ignore padding on either side (0 for the first real token)."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


@dataclass(frozen=True)
class Family:
    """One VLM family; instances live in :data:`FAMILIES`, keyed by ``model_type``."""

    model_type: str
    model_class: str
    processor_class: str
    checkpoints: tuple          # released instruct checkpoints that load as this family (download hints)
    placeholder: str            # what the chat template writes for one image
    image_token: str            # the token each image feature replaces
    image_end: str              # the token closing the image span
    turn_end: str               # the token closing a turn
    chat_tokens: tuple = ()     # the template's own control tokens (refused inside prompts)
    pixel_budget: bool = True   # fve_min_pixels / fve_max_pixels change the image tokens

    # ---- loading ----------------------------------------------------------------------------------
    def image_processor(self, path):
        raise NotImplementedError

    def processor(self, tokenizer, image_processor, chat_template, config):
        cls = image_only_processor_class(_transformers(self.processor_class))
        return cls(image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template)

    # ---- one image -> tokens ----------------------------------------------------------------------
    def default_budget(self, image_processor):
        """``(min_pixels, max_pixels)`` of the folder's preprocessor config."""
        raise NotImplementedError

    def images_kwargs(self, image_processor, min_pixels, max_pixels):
        """Keyword arguments of the image processor (and of the processor's ``images_kwargs``)."""
        raise NotImplementedError

    def pixels(self, vlm, image, min_pixels, max_pixels):
        """``(pixel tensor, layout)`` for one RGB PIL image."""
        raise NotImplementedError

    def n_image_tokens(self, vlm, layout):
        raise NotImplementedError

    def vision_patches(self, vlm, layout):
        """Patches the vision tower runs on for one image (its cost per parameter, for the FLOP estimate)."""
        raise NotImplementedError

    def expansion(self, vlm, n_tokens):
        """The text that replaces :attr:`placeholder` for an image of ``n_tokens`` tokens, as the
        family's processor writes it."""
        return self.image_token * n_tokens

    # ---- vision tower and language model ------------------------------------------------------------
    def vision_features(self, vlm, pixels, layouts):
        """``[(pooler [tokens, hidden], deepstack list)]``, one per image, from one vision-tower pass."""
        raise NotImplementedError

    def language_inputs(self, vlm, ids, mask, image_id, features):
        """Keyword arguments of ``model.model(...)`` besides ``input_ids`` / ``attention_mask`` for a
        padded batch whose image features are ``features`` (VisionFeatures, one per row, in order)."""
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        import torch

        pooler = torch.cat([f.pooler for f in features]).to(ids.device)
        return {"position_ids": positions_from_mask(mask),
                "mm_encoder_outputs": {"image": BaseModelOutputWithPooling(pooler_output=pooler)}}

    def control_tokens(self):
        """The chat template's control tokens and the image tokens (known without loading the tokenizer)."""
        return sorted(set(self.chat_tokens) | {self.placeholder, self.image_token, self.image_end, self.turn_end})

    def reserved_tokens(self, tokenizer):
        """Token strings a prompt may not contain: the tokenizer's special and special-added tokens and
        the :meth:`control_tokens`."""
        added = [t.content for t in tokenizer.added_tokens_decoder.values() if t.special]
        return sorted(set(tokenizer.all_special_tokens) | set(added) | set(self.control_tokens()))


@dataclass(frozen=True)
class QwenVLFamily(Family):
    """Qwen2.5-VL and Qwen3-VL: dynamic resolution, 3-D rotary positions from the patch grid; Qwen3-VL
    adds DeepStack features."""

    def image_processor(self, path):
        # Qwen2.5-VL and Qwen3-VL share this class; preprocessor_config.json sets patch (14 / 16), merge,
        # mean/std and the default pixel budget.
        return _pil_image_processor("qwen2_vl.image_processing_pil_qwen2_vl", "Qwen2VLImageProcessorPil", path)

    def default_budget(self, image_processor):
        return int(image_processor.size["shortest_edge"]), int(image_processor.size["longest_edge"])

    def images_kwargs(self, image_processor, min_pixels, max_pixels):
        return {"size": {"shortest_edge": int(min_pixels), "longest_edge": int(max_pixels)}}

    def pixels(self, vlm, image, min_pixels, max_pixels):
        ip = vlm.image_processor
        out = ip(images=[image], return_tensors="pt", **self.images_kwargs(ip, min_pixels, max_pixels))
        return out["pixel_values"], tuple(int(g) for g in out["image_grid_thw"][0])

    def n_image_tokens(self, vlm, layout):
        t, h, w = layout
        return t * h * w // int(vlm.image_processor.merge_size) ** 2

    def vision_patches(self, vlm, layout):
        t, h, w = layout
        return t * h * w

    def vision_features(self, vlm, pixels, layouts):
        import torch

        grid = torch.tensor(layouts, dtype=torch.long, device=vlm.device)
        out = vlm.model.model.get_image_features(torch.cat(pixels).to(vlm.device), grid, return_dict=True)
        deepstack = getattr(out, "deepstack_features", None) or []
        return [(out.pooler_output[k], [level[k] for level in deepstack]) for k in range(len(layouts))]

    def language_inputs(self, vlm, ids, mask, image_id, features):
        import torch

        fields = {"pooler_output": tuple(f.pooler.to(ids.device) for f in features)}
        if self.model_type == "qwen3_vl":
            from transformers.models.qwen3_vl.modeling_qwen3_vl import BaseModelOutputWithDeepstackFeatures as Out

            fields["deepstack_features"] = [tuple(f.deepstack[level].to(ids.device) for f in features)
                                            for level in range(len(features[0].deepstack))]
        else:
            from transformers.modeling_outputs import BaseModelOutputWithPooling as Out
        # rotary positions: the model computes them from the grid and the attention mask
        return {"mm_token_type_ids": (ids == image_id).long(),
                "image_grid_thw": torch.tensor([f.grid for f in features], dtype=torch.long, device=ids.device),
                "mm_encoder_outputs": {"image": Out(**fields)}}


@dataclass(frozen=True)
class Gemma3Family(Family):
    """Gemma-3 (4B / 12B / 27B): a fixed square image, 256 soft tokens, a bidirectional mask among them."""

    pixel_budget: bool = False

    def image_processor(self, path):
        return _pil_image_processor("gemma3.image_processing_pil_gemma3", "Gemma3ImageProcessorPil", path)

    def processor(self, tokenizer, image_processor, chat_template, config):
        return _transformers(self.processor_class)(image_processor=image_processor, tokenizer=tokenizer,
                                                   chat_template=chat_template,
                                                   image_seq_length=int(config["mm_tokens_per_image"]))

    def default_budget(self, image_processor):
        area = int(image_processor.size["height"]) * int(image_processor.size["width"])
        return area, area

    def images_kwargs(self, image_processor, min_pixels, max_pixels):
        return {"do_pan_and_scan": False}

    def pixels(self, vlm, image, min_pixels, max_pixels):
        ip = vlm.image_processor
        out = ip(images=[image], return_tensors="pt", **self.images_kwargs(ip, min_pixels, max_pixels))
        return out["pixel_values"], (1,)

    def n_image_tokens(self, vlm, layout):
        return int(vlm.model.config.mm_tokens_per_image)

    def vision_patches(self, vlm, layout):
        vision = vlm.model.config.vision_config
        return (int(vision.image_size) // int(vision.patch_size)) ** 2

    def expansion(self, vlm, n_tokens):
        tok = vlm.tokenizer
        # Gemma3Processor.full_image_sequence for n_tokens soft tokens
        return f"\n\n{tok.boi_token}{tok.image_token * n_tokens}{tok.eoi_token}\n\n"

    def vision_features(self, vlm, pixels, layouts):
        import torch

        out = vlm.model.model.get_image_features(torch.cat(pixels).to(vlm.device), return_dict=True)
        return [(out.pooler_output[k], []) for k in range(len(layouts))]

    def language_inputs(self, vlm, ids, mask, image_id, features):
        inputs = super().language_inputs(vlm, ids, mask, image_id, features)
        # token_type_ids = 1 on the soft tokens turns on Gemma-3's bidirectional attention among them
        inputs["token_type_ids"] = (ids == image_id).long()
        return inputs


@dataclass(frozen=True)
class InternVLFamily(Family):
    """InternVL3 in transformers' native layout (``OpenGVLab/InternVL3-*-hf``): 448 x 448 tiles, 256 tokens
    per tile."""

    def image_processor(self, path):
        return _pil_image_processor("got_ocr2.image_processing_pil_got_ocr2", "GotOcr2ImageProcessorPil", path)

    def processor(self, tokenizer, image_processor, chat_template, config):
        cls = image_only_processor_class(_transformers(self.processor_class))
        return cls(image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template,
                   image_seq_length=tokens_per_tile(config))

    @staticmethod
    def tile_area(image_processor):
        return int(image_processor.size["height"]) * int(image_processor.size["width"])

    def default_budget(self, image_processor):
        area = self.tile_area(image_processor)
        return area, area * int(image_processor.max_patches or 1)

    def images_kwargs(self, image_processor, min_pixels, max_pixels):
        tiles = max(1, int(max_pixels) // self.tile_area(image_processor))
        return {"crop_to_patches": tiles > 1, "min_patches": 1, "max_patches": tiles}

    def pixels(self, vlm, image, min_pixels, max_pixels):
        ip = vlm.image_processor
        out = ip(images=[image], return_tensors="pt", **self.images_kwargs(ip, min_pixels, max_pixels))
        return out["pixel_values"], (int(out["pixel_values"].shape[0]),)

    def n_image_tokens(self, vlm, layout):
        return layout[0] * tokens_per_tile(vlm.model.config.to_dict())

    def vision_patches(self, vlm, layout):
        per_tile = tokens_per_tile(vlm.model.config.to_dict()) / vlm.model.config.downsample_ratio ** 2
        return layout[0] * int(round(per_tile))

    def expansion(self, vlm, n_tokens):
        tok = vlm.tokenizer
        return f"{tok.start_image_token}{tok.context_image_token * n_tokens}{tok.end_image_token}"

    def vision_features(self, vlm, pixels, layouts):
        import torch

        out = vlm.model.model.get_image_features(pixel_values=torch.cat(pixels).to(vlm.device), return_dict=True)
        tiles = out.pooler_output            # [all tiles, tokens per tile, hidden]
        feats, start = [], 0
        for (n,) in layouts:
            feats.append((tiles[start:start + n].reshape(-1, tiles.shape[-1]), []))
            start += n
        return feats


def tokens_per_tile(config):
    """InternVL's image tokens per tile: (image size / patch size)^2 x downsample_ratio^2 (256 for 448 / 14 /
    0.5), from a config dict."""
    vision = config["vision_config"]
    size, patch = vision["image_size"], vision["patch_size"]
    size = size[0] if isinstance(size, (list, tuple)) else size
    patch = patch[0] if isinstance(patch, (list, tuple)) else patch
    return int(round((size // patch) ** 2 * config["downsample_ratio"] ** 2))


# The 22 special tokens of the Qwen2/2.5 vocabulary, in id order (151643 ... 151664 in the real one).
QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>",
    "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>",
]
QWEN_CHAT_TOKENS = tuple(QWEN_SPECIAL_TOKENS)

FAMILIES = {f.model_type: f for f in (
    QwenVLFamily("qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLProcessor",
                 ("Qwen/Qwen2.5-VL-7B-Instruct", "Qwen/Qwen2.5-VL-3B-Instruct", "Qwen/Qwen2.5-VL-32B-Instruct"),
                 "<|image_pad|>", "<|image_pad|>", "<|vision_end|>", "<|im_end|>", QWEN_CHAT_TOKENS),
    QwenVLFamily("qwen3_vl", "Qwen3VLForConditionalGeneration", "Qwen3VLProcessor",
                 ("Qwen/Qwen3-VL-8B-Instruct", "Qwen/Qwen3-VL-4B-Instruct", "Qwen/Qwen3-VL-32B-Instruct"),
                 "<|image_pad|>", "<|image_pad|>", "<|vision_end|>", "<|im_end|>", QWEN_CHAT_TOKENS),
    Gemma3Family("gemma3", "Gemma3ForConditionalGeneration", "Gemma3Processor",
                 ("google/gemma-3-4b-it", "google/gemma-3-12b-it", "google/gemma-3-27b-it"),
                 "<start_of_image>", "<image_soft_token>", "<end_of_image>", "<end_of_turn>",
                 ("<bos>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>")),
    InternVLFamily("internvl", "InternVLForConditionalGeneration", "InternVLProcessor",
                   ("OpenGVLab/InternVL3-8B-hf", "OpenGVLab/InternVL3-14B-hf", "OpenGVLab/InternVL3-38B-hf"),
                   "<IMG_CONTEXT>", "<IMG_CONTEXT>", "</img>", "<|im_end|>",
                   QWEN_CHAT_TOKENS + ("<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>", "<ref>", "</ref>",
                                       "<box>", "</box>")),
)}

# model_type values of checkpoints that look right but do not load as a family here, and what to use instead
NEAR_MISSES = {
    "internvl_chat": "this is InternVL's original remote-code layout (trust_remote_code); download the "
                     "transformers-native copy instead, e.g. OpenGVLab/InternVL3-8B-hf",
    "gemma3_text": "this is a text-only Gemma-3 checkpoint (gemma-3-1b has no vision tower); use gemma-3-4b-it "
                   "or larger",
    "qwen2_vl": "Qwen2-VL is not supported; use Qwen2.5-VL (Qwen/Qwen2.5-VL-7B-Instruct) or Qwen3-VL",
}
