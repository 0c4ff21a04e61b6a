"""The chat turn FVE encodes: which order the prompt and the image take in the user turn, the token ids
of the rendered turn with the image expanded to its pad tokens, the positions that are pooled, and the
image preprocessing under the pixel budget. :class:`~recbole_reveal.fve.encoder.FVEEncoder` runs these
turns through the model in batches; the attention heatmaps build the same turns.

``fve_pooling`` (see docs/fve.md, "The prompt-order issue") picks the layout:

==========================  ==================  =========================================================
name                        user turn           pooled positions
==========================  ==================  =========================================================
``image_after_prompt``      [prompt, image]     the image-pad tokens, which attend to the prompt (default)
``text_after_image``        [image, prompt]     the prompt's tokens, which attend to the whole image
``last_token``              [image, prompt]     the last token of ``<|im_start|>assistant\\n``
``reference_image_first``   [image, prompt]     the image-pad tokens: prompt-invariant (the reference code)
==========================  ==================  =========================================================
"""

from recbole_reveal.fve.vlm import QWEN_SPECIAL_TOKENS

# pooling name -> (message order, pooled positions, add_generation_prompt)
POOLINGS = {
    "image_after_prompt": ("prompt_image", "image", False),
    "text_after_image": ("image_prompt", "prompt", False),
    "last_token": ("image_prompt", "last", True),
    "reference_image_first": ("image_prompt", "image", False),
}
DEFAULT_POOLING = "image_after_prompt"
IMAGE_TOKEN = "<|image_pad|>"


class ChatTurn:
    """How one (prompt, image) becomes model input for ``vlm`` under ``pooling`` and a pixel budget.

    ``min_pixels`` / ``max_pixels`` default to the folder's preprocessor_config.json.
    """

    def __init__(self, vlm, pooling=DEFAULT_POOLING, min_pixels=None, max_pixels=None):
        if pooling not in POOLINGS:
            raise ValueError(f"fve_pooling must be one of {', '.join(POOLINGS)}; got {pooling!r}")
        self.vlm = vlm
        self.pooling = pooling
        self.order, self.positions, self.generation_prompt = POOLINGS[pooling]
        ip = vlm.image_processor
        self.min_pixels = int(min_pixels if min_pixels is not None else ip.size["shortest_edge"])
        self.max_pixels = int(max_pixels if max_pixels is not None else ip.size["longest_edge"])
        if not 0 < self.min_pixels <= self.max_pixels:
            raise ValueError(f"need 0 < fve_min_pixels <= fve_max_pixels, got {self.min_pixels}, {self.max_pixels}")
        self.merge_size = int(ip.merge_size)
        tok = vlm.tokenizer
        self.image_id = vlm.token_id(IMAGE_TOKEN)
        self.vision_end_id = vlm.token_id("<|vision_end|>")
        self.im_end_id = vlm.token_id("<|im_end|>")
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else vlm.token_id("<|endoftext|>")
        self.reserved = sorted(set(QWEN_SPECIAL_TOKENS) | set(tok.all_special_tokens))

    def check_prompt(self, prompt, where):
        """Refuse an empty prompt or one holding reserved chat tokens (``where`` names it in the error)."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"{where}: empty prompt")
        bad = [t for t in self.reserved if t in prompt]
        if bad:
            raise ValueError(f"{where}: prompt contains reserved chat tokens {bad}: {prompt!r}")

    def messages(self, prompt):
        text, image = {"type": "text", "text": prompt}, {"type": "image"}
        content = [text, image] if self.order == "prompt_image" else [image, text]
        return [{"role": "user", "content": content}]

    def n_image_tokens(self, grid):
        """Image-pad tokens of an image whose patch grid is ``grid`` (t, h, w)."""
        return grid[0] * grid[1] * grid[2] // self.merge_size ** 2

    def token_ids(self, prompt, n_image_tokens):
        """Token ids of the chat-rendered turn with the image expanded to ``n_image_tokens`` pads, as
        the processor does (the special tokens around the pad split the text, so tokenising the two
        sides separately gives the same ids), and the pooled positions."""
        text = self.vlm.processor.apply_chat_template(self.messages(prompt), tokenize=False,
                                                      add_generation_prompt=self.generation_prompt)
        if text.count(IMAGE_TOKEN) != 1:
            raise ValueError(f"the chat template rendered {text.count(IMAGE_TOKEN)} image tokens, expected 1")
        before, after = text.split(IMAGE_TOKEN)
        tok = self.vlm.tokenizer
        ids = tok(before)["input_ids"] + [self.image_id] * n_image_tokens + tok(after)["input_ids"]
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

    def pixel_inputs(self, image):
        """The image processor's output (``pixel_values``, ``image_grid_thw``) for one PIL image,
        resized within the pixel budget."""
        return self.vlm.image_processor(images=[image], return_tensors="pt",
                                        size={"shortest_edge": self.min_pixels, "longest_edge": self.max_pixels})
