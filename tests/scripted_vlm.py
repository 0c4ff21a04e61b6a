"""A tiny Qwen2.5-VL whose greedy answer to any chat turn is a fixed text: the accepted-rewrite path
of the FVE critic, exercised with the real model classes, processor and ``generate``.

The random tiny model (``build_tiny_qwen2_5_vl``) never writes a well-formed critic answer. Here the
answer is spelled as added tokens a_1..a_n, and the weights make greedy decoding walk the chain
trigger -> a_1 -> ... -> a_n -> <|im_end|>, where the trigger is the last token of the generation prompt:
each chain token's input embedding is a large one-hot (so it dominates the normalised residual stream
after the random layers) and the next token's output row reads that coordinate. Everything else stays
random, so the hidden states at the image positions still depend on the prompt (what FVE encodes).
"""

import torch

from recbole_reveal.fve.vlm import (
    QWEN2_5_VL_CHAT_TEMPLATE,
    TINY_TEXT,
    TINY_VISION,
    _qwen2_5_vl_config,
    _save_folder,
    build_scratch_tokenizer,
)

EMBED_SCALE, READ_SCALE = 100.0, 50.0


def build_scripted_qwen2_5_vl(folder, answer_pieces, seed=0):
    """Write the scripted model to ``folder``; greedy decoding answers ``"".join(answer_pieces)``."""
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
            embed[token, k] = EMBED_SCALE
            head[successor] = 0.0
            head[successor, k] = READ_SCALE
    image_processor = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=28 * 28 * 1280)
    return _save_folder(folder, model, tokenizer, image_processor, QWEN2_5_VL_CHAT_TEMPLATE)
