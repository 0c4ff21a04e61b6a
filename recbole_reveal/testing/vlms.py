"""Random and scripted Qwen-VL models for tests, benchmarks and demos (never for real runs). Light:
torch and transformers are imported by the builders, not by this module.

* :func:`build_tiny_qwen2_5_vl` / :func:`build_tiny_qwen3_vl` write a randomly initialised model of
  the real classes (plus a small byte-level BPE tokenizer with the real Qwen special tokens, the
  Qwen chat template and an image-processor config) as an ordinary local folder, so tests and the
  CPU benchmark go through exactly the loading path a real checkpoint takes
  (:func:`~recbole_reveal.fve.vlm.load.load_vlm`).
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
# The chat template google/gemma-3-*-it ship: <bos>, a system turn folded into the first user turn,
# "model" for the assistant role, text trimmed, an image written as <start_of_image>.
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}\n{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- if messages[0]['content'] is string -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}\n"
    "    {%- else -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}\n"
    "    {%- endif -%}\n    {%- set loop_messages = messages[1:] -%}\n{%- else -%}\n"
    "    {%- set first_user_prefix = \"\" -%}\n    {%- set loop_messages = messages -%}\n{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    "        {{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}\n"
    "    {%- endif -%}\n    {%- if (message['role'] == 'assistant') -%}\n        {%- set role = \"model\" -%}\n"
    "    {%- else -%}\n        {%- set role = message['role'] -%}\n    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {%- if message['content'] is string -%}\n        {{ message['content'] | trim }}\n"
    "    {%- elif message['content'] is iterable -%}\n        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'image' -%}\n                {{ '<start_of_image>' }}\n"
    "            {%- elif item['type'] == 'text' -%}\n                {{ item['text'] | trim }}\n"
    "            {%- endif -%}\n        {%- endfor -%}\n    {%- else -%}\n"
    "        {{ raise_exception(\"Invalid content type\") }}\n    {%- endif -%}\n"
    "    {{ '<end_of_turn>\n' }}\n{%- endfor -%}\n{%- if add_generation_prompt -%}\n"
    "    {{'<start_of_turn>model\n'}}\n{%- endif -%}\n")
# The chat template of transformers' InternVL checkpoints (OpenGVLab/InternVL3-*-hf): ChatML without a
# default system turn, an image written as <IMG_CONTEXT> and a newline.
INTERNVL_CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}{{ '<IMG_CONTEXT>\n' }}"
    "{% elif content['type'] == 'video' %}{{ '<video>\n' }}{% elif content['type'] == 'text' %}"
    "{{ content['text'] }}{% endif %}{% endfor %}{% endif %}{{'<|im_end|>\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{'<|im_start|>assistant\n' }}{% endif %}")
INTERNVL_NAMED_TOKENS = {"start_image_token": "<img>", "end_image_token": "</img>",
                         "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"}
INTERNVL_EXTRA_TOKENS = ("<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>")

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


def build_scratch_tokenizer(vocab_size=600, named_tokens=None, extra_tokens=()):
    """A byte-level BPE ``Qwen2Tokenizer`` trained on a fixed corpus, with Qwen's special tokens.

    Same pre-tokenisation (Qwen's split regex + byte level) and the same special-token strings as the
    real tokenizer; ids differ (the model config is built from this tokenizer's ids). Deterministic.
    ``named_tokens`` (e.g. InternVL's ``{"context_image_token": "<IMG_CONTEXT>", ...}``) become tokenizer
    attributes as in the released tokenizer_config.json; they and ``extra_tokens`` are added as special.
    """
    from recbole_reveal.fve.vlm.families import QWEN_SPECIAL_TOKENS
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
    tokenizer = Qwen2Tokenizer(vocab=model["vocab"], merges=merges, **(
        {"extra_special_tokens": dict(named_tokens)} if named_tokens else {}))
    tokenizer.add_tokens(QWEN_SPECIAL_TOKENS, special_tokens=True)
    extra = list(dict.fromkeys([*(named_tokens or {}).values(), *extra_tokens]))
    if extra:
        tokenizer.add_tokens(extra, special_tokens=True)
    return tokenizer


def _special_ids(tokenizer):
    from recbole_reveal.fve.vlm.families import QWEN_SPECIAL_TOKENS

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


GEMMA3_TINY_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16, sliding_window=24,
                        max_position_embeddings=4096, layer_types=["sliding_attention", "full_attention"])
# 64 x 64 images, 8 x 8 patches, pooled to 4 x 4 = 16 soft tokens (the real model: 896 / 14 -> 16 x 16 = 256)
GEMMA3_TINY_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                          image_size=64, patch_size=8, vision_use_head=False)
GEMMA3_TINY_TOKENS = 16


def build_scratch_gemma_tokenizer(vocab_size=700):
    """A ``GemmaTokenizer`` (BPE with byte fallback, "▁" for spaces, <bos> added by default as the released
    tokenizer.json does) trained on the fixed corpus, with Gemma-3's special tokens and its named
    image tokens (``boi_token``, ``eoi_token``, ``image_token``). Deterministic."""
    from tokenizers import Tokenizer, models, normalizers, processors, trainers
    from transformers import GemmaTokenizer

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"] + [f"<0x{b:02X}>" for b in range(256)]
    bpe = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    bpe.normalizer = normalizers.Replace(" ", "▁")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False, special_tokens=specials)
    bpe.train_from_iterator([_TOKENIZER_CORPUS] * 4, trainer)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    named = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"}
    tokenizer = GemmaTokenizer(vocab=model["vocab"], merges=merges, extra_special_tokens=named)
    tokenizer.add_tokens(["<start_of_turn>", "<end_of_turn>", *named.values()], special_tokens=True)
    tokenizer._tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", tokenizer.bos_token_id)])
    return tokenizer


def build_tiny_gemma3(folder, seed=0):
    """Write a tiny randomly initialised Gemma-3 (``Gemma3ForConditionalGeneration``: text hidden 64, a
    sliding-window and a global layer; SigLIP vision tower with 64 x 64 images pooled to 16 soft tokens)
    with its tokenizer, PIL image-processor config and the released chat template, as a local folder;
    returns ``folder``."""
    import torch
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    tokenizer = build_scratch_gemma_tokenizer()
    end_of_turn = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    text = dict(GEMMA3_TINY_TEXT, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=[tokenizer.eos_token_id, end_of_turn])
    config = Gemma3Config(text_config=text, vision_config=GEMMA3_TINY_VISION, mm_tokens_per_image=GEMMA3_TINY_TOKENS,
                          image_token_id=tokenizer.image_token_id, boi_token_id=tokenizer.boi_token_id,
                          eoi_token_id=tokenizer.eoi_token_id)
    torch.manual_seed(seed)
    model = Gemma3ForConditionalGeneration(config).eval()
    with torch.no_grad():   # transformers initialises the projector to zeros (the image would not reach the LM)
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(0.0, 0.5)
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, end_of_turn]
    size = GEMMA3_TINY_VISION["image_size"]
    image_processor = Gemma3ImageProcessorPil(size={"height": size, "width": size}, image_mean=[0.5] * 3,
                                              image_std=[0.5] * 3)
    return _save_folder(folder, model, tokenizer, image_processor, GEMMA3_CHAT_TEMPLATE)


INTERNVL_TINY_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=True)
# 32 x 32 tiles, 4 x 4 patches -> 8 x 8, pixel shuffle 0.5 -> 16 tokens per tile (the real model: 448 / 14 -> 256)
INTERNVL_TINY_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                            image_size=[32, 32], patch_size=[4, 4], use_absolute_position_embeddings=True)


def build_tiny_internvl(folder, seed=0, max_patches=4):
    """Write a tiny randomly initialised InternVL in transformers' native layout (``InternVLForConditionalGeneration``,
    the ``-hf`` checkpoints: InternViT tower, pixel shuffle, Qwen2 language model; 32 x 32 tiles of 16 tokens,
    up to ``max_patches`` tiles) with its tokenizer, PIL image-processor config and chat template; returns
    ``folder``."""
    import torch
    from transformers import InternVLConfig, InternVLForConditionalGeneration
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    tokenizer = build_scratch_tokenizer(named_tokens=INTERNVL_NAMED_TOKENS, extra_tokens=INTERNVL_EXTRA_TOKENS)
    im_end, pad = tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")
    text = dict(INTERNVL_TINY_TEXT, model_type="qwen2", vocab_size=len(tokenizer), bos_token_id=pad,
                eos_token_id=im_end, pad_token_id=pad)
    config = InternVLConfig(text_config=text, vision_config=INTERNVL_TINY_VISION,
                            image_token_id=tokenizer.context_image_token_id, downsample_ratio=0.5)
    torch.manual_seed(seed)
    model = InternVLForConditionalGeneration(config).eval()
    size = INTERNVL_TINY_VISION["image_size"][0]
    image_processor = GotOcr2ImageProcessorPil(size={"height": size, "width": size}, crop_to_patches=False,
                                               min_patches=1, max_patches=max_patches,
                                               image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    return _save_folder(folder, model, tokenizer, image_processor, INTERNVL_CHAT_TEMPLATE)


# Published config.json values of the Gemma-3 and InternVL3 checkpoints of the paper's Table 6 (text part,
# vision part), for parameter counts on the meta device and memory estimates.
FAMILY_SHAPES = {
    "gemma-3-4b": ("gemma3", dict(hidden_size=2560, intermediate_size=10240, num_hidden_layers=34,
                                  num_attention_heads=8, num_key_value_heads=4, head_dim=256, query_pre_attn_scalar=256, vocab_size=262208,
                                  sliding_window=1024),
                   dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                        image_size=896, patch_size=14, vision_use_head=False)),
    "gemma-3-12b": ("gemma3", dict(hidden_size=3840, intermediate_size=15360, num_hidden_layers=48,
                                   num_attention_heads=16, num_key_value_heads=8, head_dim=256, query_pre_attn_scalar=256, vocab_size=262208,
                                   sliding_window=1024),
                    dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                         image_size=896, patch_size=14, vision_use_head=False)),
    "internvl3-8b": ("internvl", dict(model_type="qwen2", hidden_size=3584, intermediate_size=18944,
                                      num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4, vocab_size=151674,
                                      tie_word_embeddings=False),
                     dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                          image_size=[448, 448], patch_size=[14, 14], attention_bias=True, use_qk_norm=False,
                          use_absolute_position_embeddings=True)),
    "internvl3-14b": ("internvl", dict(model_type="qwen2", hidden_size=5120, intermediate_size=13824,
                                       num_hidden_layers=48, num_attention_heads=40, num_key_value_heads=8, vocab_size=151674,
                                       tie_word_embeddings=False),
                      dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                           image_size=[448, 448], patch_size=[14, 14], attention_bias=True, use_qk_norm=False,
                           use_absolute_position_embeddings=True)),
}


def family_shape_config(shape):
    """The transformers config of a released Gemma-3 / InternVL3 checkpoint (``FAMILY_SHAPES``), e.g. to count
    its parameters on the meta device."""
    if shape not in FAMILY_SHAPES:
        raise ValueError(f"shape must be one of {sorted(FAMILY_SHAPES)}, got {shape!r}")
    family, text, vision = FAMILY_SHAPES[shape]
    if family == "gemma3":
        from transformers import Gemma3Config

        return Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=256)
    from transformers import InternVLConfig

    return InternVLConfig(text_config=text, vision_config=vision, downsample_ratio=0.5,
                          tie_word_embeddings=text.get("tie_word_embeddings", True))


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

    from recbole_reveal.fve.vlm.families import image_only_processor_class
    from recbole_reveal.fve.vlm.load import LoadedVLM, _transformers_class, resolve_device, resolve_dtype

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
    about 16.6 GB for ``7b``), so a benchmark loads it through :func:`~recbole_reveal.fve.vlm.load.load_vlm`
    with every load option a real checkpoint has (attention kernel, 4/8-bit weights)."""
    vlm = random_qwen2_5_vl(shape, device=device, dtype=dtype, seed=seed)
    _save_folder(folder, vlm.model, vlm.tokenizer, vlm.image_processor, QWEN2_5_VL_CHAT_TEMPLATE)
    del vlm
    return folder
