"""Random and scripted Qwen-VL models for tests, benchmarks and demos (never for real runs). Light:
torch and transformers are imported by the builders, not by this module.

* :func:`build_tiny_qwen2_5_vl` / :func:`build_tiny_qwen3_vl` write a randomly initialised model of
  the real classes (plus a small byte-level BPE tokenizer with the real Qwen special tokens, the
  Qwen chat template and an image-processor config) as an ordinary local folder, so tests and the
  CPU benchmark go through exactly the loading path a real checkpoint takes
  (:func:`~recbole_reveal.fve.vlm.load_vlm`).
* :func:`build_scripted_qwen2_5_vl` writes a tiny model whose greedy answer is a fixed text: the
  accepted-rewrite path of the critic with the real classes.
* :func:`random_qwen2_5_vl` builds random weights at the real 3B / 7B shapes in memory, for
  throughput measurements on a GPU without downloading anything; :func:`real_shape_config` gives
  their configs (e.g. to count parameters on the meta device).
"""

import json
import os
# The chat template Qwen2-VL / Qwen2.5-VL Instruct checkpoints ship (chat_template.json): a default
# system turn, images as <|vision_start|><|image_pad|><|vision_end|> in message order.
QWEN2_5_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Qwen3-VL's template has no default system turn; otherwise the same structure for text + images.
QWEN3_VL_CHAT_TEMPLATE = QWEN2_5_VL_CHAT_TEMPLATE.replace(
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}", "")

# Published config.json values of the two checkpoints the paper's Table 6 compares.
REAL_SHAPES = {
    "7b": dict(
        text=dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                  num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=128000,
                  rope_theta=1e6, mrope_section=[16, 24, 24], tie_word_embeddings=False),
        vision=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                    window_size=112, fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2)),
    "3b": dict(
        text=dict(vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                  num_attention_heads=16, num_key_value_heads=2, max_position_embeddings=128000,
                  rope_theta=1e6, mrope_section=[16, 24, 24], tie_word_embeddings=True),
        vision=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048,
                    window_size=112, fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2)),
}


# realistic number of pieces rather than one token per byte.
_TOKENIZER_CORPUS = (
    "An item image of a backpack. Item name: Vertex backpack ZH-224. Users often mention: blue, "
    "sturdy, zipper, straps, pockets. Focus on the overall appearance of the item. You are a helpful "
    "assistant. The colour, pattern, shape, material, texture, stripes, dots, checks and size of the "
    "product; a watch, a mug, a tent, a lamp, a perfume bottle, a shoe, a jacket. Assess whether the "
    "current prompt effectively extracts visual features for recommendation by comparing the "
    "prediction with the ground truth. ANALYSIS: NEW_PROMPT: red green yellow purple orange white "
    "black grey brown pink. Arrived on time, works as described, would buy again, recommended."
)


def build_scratch_tokenizer(vocab_size=600):
    """A byte-level BPE ``Qwen2Tokenizer`` trained on a fixed corpus, with Qwen's special tokens.

    Same pre-tokenisation (Qwen's split regex + byte level) and the same special-token strings as the
    real tokenizer; ids differ (the model config is built from this tokenizer's ids). Deterministic.
    """
    from recbole_reveal.fve.vlm import QWEN_SPECIAL_TOKENS
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator([_TOKENIZER_CORPUS] * 4, trainer)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    tokenizer = Qwen2Tokenizer(vocab=model["vocab"], merges=merges)
    tokenizer.add_tokens(QWEN_SPECIAL_TOKENS, special_tokens=True)
    return tokenizer


def _special_ids(tokenizer):
    from recbole_reveal.fve.vlm import QWEN_SPECIAL_TOKENS

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    return dict(image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"]), ids


def _qwen2_5_vl_config(tokenizer, text, vision):
    from transformers import Qwen2_5_VLConfig

    tokens, ids = _special_ids(tokenizer)
    text = dict(text)
    rope = {"rope_type": "default", "rope_theta": text.pop("rope_theta"), "mrope_section": text.pop("mrope_section")}
    text_config = dict(text, rope_parameters=rope, bos_token_id=ids["<|endoftext|>"],
                       eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    vision_config = dict(dict(patch_size=14, spatial_merge_size=2, temporal_patch_size=2), **vision)
    return Qwen2_5_VLConfig(text_config=text_config, vision_config=vision_config, **tokens)


TINY_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=4096, rope_theta=1e6,
                 mrope_section=[2, 3, 3], tie_word_embeddings=True)
TINY_VISION = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                   window_size=112, fullatt_block_indexes=[1])


def _save_folder(folder, model, tokenizer, image_processor, chat_template):
    os.makedirs(folder, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    image_processor.save_pretrained(folder)
    # chat_template.json is where the released Qwen-VL checkpoints keep it
    with open(os.path.join(folder, "chat_template.json"), "w", encoding="utf-8") as f:
        json.dump({"chat_template": chat_template}, f, indent=2)
    return folder


def build_tiny_qwen2_5_vl(folder, seed=0):
    """Write a tiny randomly initialised Qwen2.5-VL (~0.2 M parameters: text hidden 64, 2 layers;
    vision depth 2, hidden 32) with the real classes as a local folder; returns ``folder``."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tokenizer = build_scratch_tokenizer()
    config = _qwen2_5_vl_config(tokenizer, dict(TINY_TEXT, vocab_size=len(tokenizer)), TINY_VISION)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    image_processor = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=28 * 28 * 1280)
    return _save_folder(folder, model, tokenizer, image_processor, QWEN2_5_VL_CHAT_TEMPLATE)


_SCRIPT_EMBED_SCALE, _SCRIPT_READ_SCALE = 100.0, 50.0


def build_scripted_qwen2_5_vl(folder, answer_pieces, seed=0):
    """Write a tiny Qwen2.5-VL to ``folder`` whose greedy answer to any chat turn is
    ``"".join(answer_pieces)``: the accepted-rewrite path of the FVE critic with the real classes.

    The random tiny model (``build_tiny_qwen2_5_vl``) never writes a well-formed critic answer. Here the
    answer is spelled as added tokens a_1..a_n, and the weights make greedy decoding walk the chain
    trigger -> a_1 -> ... -> a_n -> <|im_end|>, where the trigger is the last token of the generation prompt:
    each chain token's input embedding is a large one-hot (so it dominates the normalised residual stream
    after the random layers) and the next token's output row reads that coordinate. Everything else stays
    random, so the hidden states at the image positions still depend on the prompt (what FVE encodes).
    """
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tokenizer = build_scratch_tokenizer()
    tokenizer.add_tokens(list(answer_pieces))
    tokenizer.chat_template = QWEN2_5_VL_CHAT_TEMPLATE
    turn = tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False,
                                         add_generation_prompt=True)
    trigger = tokenizer(turn)["input_ids"][-1]
    chain = [trigger] + tokenizer.convert_tokens_to_ids(list(answer_pieces)) + [
        tokenizer.convert_tokens_to_ids("<|im_end|>")]
    if len(set(chain)) != len(chain):
        raise ValueError("answer pieces must be distinct tokens, different from the prompt's last token")
    text = dict(TINY_TEXT, vocab_size=len(tokenizer), tie_word_embeddings=False)
    if len(chain) > text["hidden_size"]:
        raise ValueError(f"at most {text['hidden_size'] - 2} answer pieces")
    config = _qwen2_5_vl_config(tokenizer, text, TINY_VISION)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    with torch.no_grad():
        for k, (token, successor) in enumerate(zip(chain, chain[1:])):
            embed[token] = 0.0
            embed[token, k] = _SCRIPT_EMBED_SCALE
            head[successor] = 0.0
            head[successor, k] = _SCRIPT_READ_SCALE
    image_processor = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=28 * 28 * 1280)
    return _save_folder(folder, model, tokenizer, image_processor, QWEN2_5_VL_CHAT_TEMPLATE)


def build_tiny_qwen3_vl(folder, seed=0):
    """As :func:`build_tiny_qwen2_5_vl` for Qwen3-VL (patch 16, DeepStack features at both vision
    layers), to exercise the second supported family."""
    import torch
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tokenizer = build_scratch_tokenizer()
    tokens, ids = _special_ids(tokenizer)
    text_config = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=4096,
                       rope_parameters={"rope_type": "default", "rope_theta": 5e6, "mrope_section": [2, 3, 3],
                                        "mrope_interleaved": True},
                       bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                       pad_token_id=ids["<|endoftext|>"])
    vision_config = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                         patch_size=16, spatial_merge_size=2, temporal_patch_size=2,
                         deepstack_visual_indexes=[0, 1], num_position_embeddings=64)
    config = Qwen3VLConfig(text_config=text_config, vision_config=vision_config, tie_word_embeddings=True, **tokens)
    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(config).eval()
    image_processor = Qwen2VLImageProcessorPil(patch_size=16, merge_size=2, temporal_patch_size=2,
                                               min_pixels=64 * 64, max_pixels=32 * 32 * 1024,
                                               image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    return _save_folder(folder, model, tokenizer, image_processor, QWEN3_VL_CHAT_TEMPLATE)


def random_qwen2_5_vl(shape, device="cuda", dtype="auto", seed=0, attn_implementation=None):
    """Random weights at the real Qwen2.5-VL-3B or -7B shape (``shape`` = "3b" / "7b"; "tiny" is the
    test model's shape), built in memory on ``device`` in the compute dtype, with the scratch
    tokenizer and the released image-processor settings.

    For throughput and memory measurements only: the compute per item is the real checkpoint's
    (same layers, widths, heads, vision tower, image tokens); the embeddings mean nothing. The
    scratch tokenizer splits prompts into somewhat more tokens than Qwen's 151 k vocabulary, so the
    measured cost is slightly pessimistic.
    """
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from recbole_reveal.fve.vlm import (
        LoadedVLM, _transformers_class, image_only_processor_class, resolve_device, resolve_dtype,
    )

    shapes = dict(REAL_SHAPES, tiny=dict(text=TINY_TEXT, vision=TINY_VISION))
    if shape not in shapes:
        raise ValueError(f"shape must be one of {sorted(shapes)}, got {shape!r}")
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    tokenizer = build_scratch_tokenizer()
    text = dict(shapes[shape]["text"])
    text.setdefault("vocab_size", len(tokenizer))
    config = _qwen2_5_vl_config(tokenizer, text, shapes[shape]["vision"])
    if attn_implementation:
        config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    with torch.device(device):   # initialise on the device, in the compute dtype: no fp32 copy of 8 B weights
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype)
    model = model.eval().requires_grad_(False)
    image_processor = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=28 * 28 * 1280)
    processor = image_only_processor_class(_transformers_class("Qwen2_5_VLProcessor"))(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=QWEN2_5_VL_CHAT_TEMPLATE)
    return LoadedVLM(model=model, processor=processor, model_type="qwen2_5_vl",
                     model_id=f"random-qwen2.5-vl-{shape}-seed{seed}", path=None, device=device, dtype=dtype)


def real_shape_config(shape):
    """The Qwen2_5_VLConfig of the released 3B / 7B checkpoint (with the scratch tokenizer's
    special-token ids), e.g. to count parameters on the meta device."""
    if shape not in REAL_SHAPES:
        raise ValueError(f"shape must be one of {sorted(REAL_SHAPES)}, got {shape!r}")
    return _qwen2_5_vl_config(build_scratch_tokenizer(), REAL_SHAPES[shape]["text"], REAL_SHAPES[shape]["vision"])


def write_random_qwen2_5_vl(shape, folder, device="cuda", dtype="auto", seed=0):
    """:func:`random_qwen2_5_vl` saved as an ordinary checkpoint folder (weights in the compute dtype:
    about 16.6 GB for ``7b``), so a benchmark loads it through :func:`~recbole_reveal.fve.vlm.load_vlm`
    with every load option a real checkpoint has (attention kernel, 4/8-bit weights)."""
    vlm = random_qwen2_5_vl(shape, device=device, dtype=dtype, seed=seed)
    _save_folder(folder, vlm.model, vlm.tokenizer, vlm.image_processor, QWEN2_5_VL_CHAT_TEMPLATE)
    del vlm
    return folder
