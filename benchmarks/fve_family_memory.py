"""Weights memory of the VLMs FVE runs (paper Table 6), from their released shapes: parameters counted on the
meta device (no download, no GPU), bf16 bytes, an NF4 estimate (``fve_quantization: 4bit``), and whether the
weights leave room on a 24 GB card (the paper's RTX 4090) for activations and the backbone.

    python benchmarks/fve_family_memory.py

NF4 estimate: bitsandbytes quantizes the linear layers (0.5 byte per weight plus one fp32 absmax per 64
weights, nested-quantized to about 0.127 bit per weight) and leaves the embeddings, the LM head and the norms
in bf16. Activations of an encode batch are not included (batch 8, ~330 tokens, sdpa: well under 2 GiB at
these widths; not measured here, no GPU).
"""

import torch

from recbole_reveal.testing.vlms import FAMILY_SHAPES, family_shape_config, real_shape_config

GIB = 2 ** 30
CARD_GIB = 24.0            # RTX 4090
HEADROOM_GIB = 3.0         # activations, CUDA context, the backbone beside the VLM


def _model(shape):
    from transformers import (
        Gemma3ForConditionalGeneration, InternVLForConditionalGeneration, Qwen2_5_VLForConditionalGeneration,
    )

    if shape in FAMILY_SHAPES:
        gemma = FAMILY_SHAPES[shape][0] == "gemma3"
        cls = Gemma3ForConditionalGeneration if gemma else InternVLForConditionalGeneration
        config = family_shape_config(shape)
    else:
        cls, config = Qwen2_5_VLForConditionalGeneration, real_shape_config(shape.split("-")[-1])
    with torch.device("meta"):
        return cls(config)


def weight_bytes(model):
    """``(total parameters, bf16 bytes, NF4 bytes)``: linear weights at 4.127 bits, the rest in bf16."""
    seen, total, linear = set(), 0, 0
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            total += p.numel()
            if isinstance(module, torch.nn.Linear) and name == "weight" and module is not model.get_output_embeddings():
                linear += p.numel()
    return total, 2 * total, linear * 4.127 / 8 + 2 * (total - linear)


def main():
    shapes = ["qwen2.5-vl-3b", "qwen2.5-vl-7b"] + list(FAMILY_SHAPES)
    print(f"{'checkpoint':16s} {'params':>8s} {'bf16 GiB':>9s} {'NF4 GiB':>8s}  "
          f"on a 24 GB card (weights + {HEADROOM_GIB:.0f} GiB)")
    for shape in shapes:
        total, bf16, nf4 = weight_bytes(_model(shape))
        fits = ("bf16" if bf16 / GIB + HEADROOM_GIB <= CARD_GIB else
                "4bit only" if nf4 / GIB + HEADROOM_GIB <= CARD_GIB else "no")
        print(f"{shape:16s} {total / 1e9:7.2f}B {bf16 / GIB:9.1f} {nf4 / GIB:8.1f}  {fits}")


if __name__ == "__main__":
    main()
