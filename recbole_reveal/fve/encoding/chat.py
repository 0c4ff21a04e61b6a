"""The chat turn FVE encodes: which order the prompt and the image take in the user turn, the token ids
of the rendered turn with the image expanded to its image tokens, the positions that are pooled, and the
image preprocessing under the pixel budget, for every VLM family (:mod:`recbole_reveal.fve.vlm.families`:
the family says what the template writes for an image and what that expands to).
:class:`~recbole_reveal.fve.encoding.encoder.FVEEncoder` runs these turns through the model in batches; the attention
heatmaps build the same turns.

``fve_pooling`` (see docs/fve.md, "The prompt-order issue") picks the layout:

==========================  ==================  =========================================================
name                        user turn           pooled positions
==========================  ==================  =========================================================
``image_after_prompt``      [prompt, image]     the image-pad tokens, which attend to the prompt (default)
``text_after_image``        [image, prompt]     the prompt's tokens, which attend to the whole image
``last_token``              [image, prompt]     the last token of the generation prompt (assistant header)
``reference_image_first``   [image, prompt]     the image-pad tokens: prompt-invariant (the reference code)
==========================  ==================  =========================================================
"""

# pooling name -> (message order, pooled positions, add_generation_prompt)
POOLINGS = {
    "image_after_prompt": ("prompt_image", "image", False),
    "text_after_image": ("image_prompt", "prompt", False),
    "last_token": ("image_prompt", "last", True),
    "reference_image_first": ("image_prompt", "image", False),
}
DEFAULT_POOLING = "image_after_prompt"
IMAGE_TOKEN = "<|image_pad|>"        # Qwen-VL's; each family names its own (``vlm.family.image_token``)


class ChatTurn:
    """How one (prompt, image) becomes model input for ``vlm`` under ``pooling`` and a pixel budget.

    ``min_pixels`` / ``max_pixels`` default to the folder's preprocessor_config.json (Gemma-3 ignores
    them: its images always have the checkpoint's fixed size).
    """

    def __init__(self, vlm, pooling=DEFAULT_POOLING, min_pixels=None, max_pixels=None):
        if pooling not in POOLINGS:
            raise ValueError(f"fve_pooling must be one of {', '.join(POOLINGS)}; got {pooling!r}")
        self.vlm = vlm
        self.pooling = pooling
        self.order, self.positions, self.generation_prompt = POOLINGS[pooling]
        self.family = family = vlm.family
        low, high = family.default_budget(vlm.image_processor)
        self.min_pixels = int(min_pixels if min_pixels is not None else low)
        self.max_pixels = int(max_pixels if max_pixels is not None else high)
        if not 0 < self.min_pixels <= self.max_pixels:
            raise ValueError(f"need 0 < fve_min_pixels <= fve_max_pixels, got {self.min_pixels}, {self.max_pixels}")
        self.merge_size = int(getattr(vlm.image_processor, "merge_size", None) or 1)
        tok = vlm.tokenizer
        self.image_id = vlm.token_id(family.image_token)
        self.vision_end_id = vlm.token_id(family.image_end)
        self.im_end_id = vlm.token_id(family.turn_end)
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else vlm.token_id("<|endoftext|>")
        self.reserved = family.reserved_tokens(tok)
        self._reserved_starts = frozenset(t[0] for t in self.reserved if t)   # cheap pre-check (Gemma has ~6k)

    def check_prompt(self, prompt, where):
        """Refuse an empty prompt or one holding reserved chat tokens (``where`` names it in the error)."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"{where}: empty prompt")
        if self._reserved_starts.isdisjoint(prompt):
            return
        bad = [t for t in self.reserved if t in prompt]
        if bad:
            raise ValueError(f"{where}: prompt contains reserved chat tokens {bad}: {prompt!r}")

    def messages(self, prompt):
        text, image = {"type": "text", "text": prompt}, {"type": "image"}
        content = [text, image] if self.order == "prompt_image" else [image, text]
        return [{"role": "user", "content": content}]

    def n_image_tokens(self, layout):
        """Image tokens of an image whose layout (:meth:`pixels`; Qwen: the patch grid t, h, w) is ``layout``."""
        return self.family.n_image_tokens(self.vlm, layout)

    def text(self, prompt, n_image_tokens):
        """The rendered turn with the image mark expanded to ``n_image_tokens`` image tokens, as the
        family's processor expands it."""
        text = self.vlm.processor.apply_chat_template(self.messages(prompt), tokenize=False,
                                                      add_generation_prompt=self.generation_prompt)
        mark = self.family.placeholder
        if text.count(mark) != 1:
            raise ValueError(f"the chat template rendered {text.count(mark)} image marks {mark!r}, expected 1")
        return text.replace(mark, self.family.expansion(self.vlm, n_image_tokens))

    def token_ids(self, prompt, n_image_tokens):
        """Token ids of the chat-rendered turn with the image expanded (the template writes the
        beginning-of-sequence token itself where the family has one, so the tokenizer adds none), and the
        pooled positions."""
        ids = self.vlm.tokenizer(self.text(prompt, n_image_tokens), add_special_tokens=False)["input_ids"]
        if ids.count(self.image_id) != n_image_tokens:
            raise ValueError(f"the rendered turn holds {ids.count(self.image_id)} image tokens, "
                             f"expected {n_image_tokens}")
        if self.positions == "image":
            pos = [k for k, t in enumerate(ids) if t == self.image_id]
        elif self.positions == "prompt":
            start = max(k for k, t in enumerate(ids) if t == self.vision_end_id) + 1
            end = ids.index(self.im_end_id, start)
            pos = list(range(start, end))
        else:
            pos = [len(ids) - 1]
        if not pos:
            raise ValueError(f"no positions to pool for prompt {prompt!r} under fve_pooling={self.pooling}")
        return ids, pos

    def pixels(self, image):
        """``(pixel tensor, layout)`` of one RGB PIL image under the pixel budget (the family's processing)."""
        return self.family.pixels(self.vlm, image, self.min_pixels, self.max_pixels)

    def pixel_inputs(self, image):
        """The image processor's whole output for one PIL image under the pixel budget (Qwen-VL:
        ``pixel_values``, ``image_grid_thw``; used by the attention heatmaps)."""
        ip = self.vlm.image_processor
        return ip(images=[image], return_tensors="pt",
                  **self.family.images_kwargs(ip, self.min_pixels, self.max_pixels))
