"""The ``transformers`` critic backend: the run's own VLM, greedy ``generate`` in batches of
``fve_rewrite_batch_size`` (``auto``: sized to the GPU, 4 on the CPU), images decoded per batch, one user
turn per item (the instruction, then the image) under a fixed seed."""

import logging

import torch

from recbole_reveal.fve.critic.generation.base import Answer, fixed_batches, user_turn
from recbole_reveal.fve.encoding.images import decode_image
from recbole_reveal.fve.vlm.folder import VLMFolder
from recbole_reveal.fve.vlm.load import resolve_device

logger = logging.getLogger(__name__)

CPU_BATCH, MAX_AUTO_BATCH = 4, 32
PROMPT_TOKENS_ESTIMATE = 1024       # instruction + 256 image tokens at 448^2, with room to spare


def auto_batch_size(text_config, weights_bytes, device, max_new_tokens):
    """``fve_rewrite_batch_size: auto``: 4 on the CPU; on a GPU, :func:`batch_for_memory` of its memory."""
    device = resolve_device(device)
    if device.type != "cuda":
        return CPU_BATCH
    total = torch.cuda.get_device_properties(device).total_memory
    return batch_for_memory(total, text_config, weights_bytes, max_new_tokens)


def batch_for_memory(total_bytes, text_config, weights_bytes, max_new_tokens):
    """As many sequences (of about :data:`PROMPT_TOKENS_ESTIMATE` + ``max_new_tokens`` tokens) as fit, at
    4x their bf16 key/value cache for activations, into 90 % of ``total_bytes`` less the weights: capped
    at 32, rounded down to a power of two (the 7B model: 16 on a 24 GB card, 32 from 40 GB)."""
    heads = text_config["num_attention_heads"]
    head_dim = text_config.get("head_dim") or text_config["hidden_size"] // heads
    kv_per_token = 2 * text_config["num_hidden_layers"] * text_config.get("num_key_value_heads", heads) * head_dim * 2
    per_sequence = 4 * kv_per_token * (PROMPT_TOKENS_ESTIMATE + max_new_tokens)
    fit = int((0.9 * total_bytes - weights_bytes) // per_sequence)
    batch = 1
    while batch * 2 <= min(fit, MAX_AUTO_BATCH):
        batch *= 2
    return batch


def resolve_batch_size(settings, device=None):
    """``fve_rewrite_batch_size`` as an int (``auto`` from the VLM folder's config and weight files)."""
    value = settings["fve_rewrite_batch_size"]
    if value != "auto":
        return int(value)
    folder = VLMFolder(settings["vlm_path"])
    config, weights = folder.config, folder.weight_bytes()
    if settings.get("fve_quantization") == "4bit":
        weights //= 4
    elif settings.get("fve_quantization") == "8bit":
        weights //= 2
    return auto_batch_size(config.get("text_config", config), weights,
                           device or resolve_device(settings["fve_device"]), settings["fve_rewrite_max_new_tokens"])


class TransformersGenerator:
    """Greedy, batched, left-padded ``generate`` with the loaded VLM (``LoadedVLM``)."""

    def __init__(self, vlm, max_new_tokens=192, batch_size=4, seed=0, min_pixels=None, max_pixels=None):
        self.vlm, self.max_new_tokens, self.batch_size, self.seed = vlm, int(max_new_tokens), int(batch_size), seed
        self.reserved_tokens = tuple(vlm.family.reserved_tokens(vlm.tokenizer))
        ip = vlm.image_processor
        low, high = vlm.family.default_budget(ip)
        self.size = {"shortest_edge": int(min_pixels or low), "longest_edge": int(max_pixels or high)}
        self.images_kwargs = vlm.family.images_kwargs(ip, self.size["shortest_edge"], self.size["longest_edge"])

    @classmethod
    def from_settings(cls, settings, vlm):
        return cls(vlm, settings["fve_rewrite_max_new_tokens"], resolve_batch_size(settings, vlm.device),
                   settings["fve_rewrite_seed"], settings["fve_min_pixels"], settings["fve_max_pixels"])

    def identity(self):
        """Everything the answers depend on besides the request (batch composition changes padding)."""
        return {"backend": "transformers", "model_id": self.vlm.model_id, "dtype": str(self.vlm.dtype),
                "max_new_tokens": self.max_new_tokens, "batch_size": self.batch_size, "seed": self.seed,
                "pixels": [self.size["shortest_edge"], self.size["longest_edge"]]}

    def generate(self, items, done, log, keys, rank=0, world=1):
        """Answer every item not in ``done`` (indices), appending each batch's answers to ``log``; with
        ``world`` > 1 this process runs the batches ``b`` with ``b % world == rank``."""
        batches = fixed_batches(list(items), self.batch_size)
        for b, batch in enumerate(batches):
            if b % world != rank or all(item.index in done for item in batch):
                continue
            results = self.answer_batch(batch)
            log.append([(item, a) for item, a in results if item.index not in done], keys)

    def answer_batch(self, batch):
        """``[(item, Answer)]`` for one batch: its images decoded now, unusable ones answered with the
        reason, the rest generated together."""
        images, todo, out = [], [], {}
        for item in batch:
            image = decode_image(item.image_path)
            if isinstance(image, str):
                out[item.index] = Answer("", False, error=image)
            else:
                images.append(image)
                todo.append(item)
        if todo:
            for item, (text, finished) in zip(todo, self.generate_texts(images, [i.text for i in todo])):
                out[item.index] = Answer(text, finished)
        return [(item, out[item.index]) for item in batch]

    @torch.inference_mode()
    def generate_texts(self, images, texts):
        """Greedy answers to one user turn [text, image] each, all in one ``generate`` call:
        ``[(answer, finished)]``, the answer decoded up to (excluding) the first end-of-turn token."""
        vlm, tok = self.vlm, self.vlm.tokenizer
        stop, pad = _stop_ids(vlm)
        side = tok.padding_side
        try:
            tok.padding_side = "left"
            chats = [vlm.processor.apply_chat_template(user_turn(t, {"type": "image"}), tokenize=False,
                                                       add_generation_prompt=True) for t in texts]
            # the chat template writes <bos> itself where the family has one (Gemma): the tokenizer adds none
            batch = vlm.processor(text=chats, images=[[image] for image in images], padding=True,
                                  return_tensors="pt", add_special_tokens=False,
                                  images_kwargs=self.images_kwargs).to(vlm.device)
            torch.manual_seed(self.seed)
            gen = vlm.model.generate(**batch, max_new_tokens=self.max_new_tokens, do_sample=False, num_beams=1,
                                     temperature=None, top_p=None, top_k=None, eos_token_id=stop, pad_token_id=pad)
        finally:
            tok.padding_side = side
        out = []
        for row in gen[:, batch["input_ids"].shape[1]:].tolist():
            cut = next((k for k, t in enumerate(row) if t in stop), None)
            out.append((tok.decode(row if cut is None else row[:cut], skip_special_tokens=False), cut is not None))
        return out


def _stop_ids(vlm):
    tok = vlm.tokenizer
    ids = vlm.model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, (list, tuple)) else [ids] if ids is not None else [])
    ids.add(vlm.token_id(vlm.family.turn_end))
    pad = tok.pad_token_id if tok.pad_token_id is not None else vlm.token_id("<|endoftext|>")
    return sorted(ids), pad
