"""FVE (paper §4.3): initial prompts, the VLM, the prompt-conditioned vision encoder and its caches,
feedback and critic, and the resumable refinement loop ``run_fve`` (recbole_reveal.fve.loop.run). See
docs/fve.md.

The names below are imported on first use, so that the light modules (``fve.config``, ``fve.prompts``)
load without torch.
"""

import importlib

# public name -> the module that defines it
_API = {
    "EmbeddingCache": "cache", "VisionFeatureCache": "cache",
    "build_fve_encoder": "config", "fve_settings": "config",
    "POOLINGS": "encoder", "EncodeResult": "encoder", "FVEEncoder": "encoder", "ItemRequest": "encoder",
    "item_requests": "encoder", "save_encoding": "encoder",
    "build_initial_prompts": "prompts", "extract_keywords": "prompts", "load_templates": "prompts",
    "read_items": "prompts", "read_prompts": "prompts", "render": "prompts", "write_prompts": "prompts",
    "LoadedVLM": "vlm", "VLMUnavailable": "vlm", "build_tiny_qwen2_5_vl": "vlm", "build_tiny_qwen3_vl": "vlm",
    "check_vlm_folder": "vlm", "load_vlm": "vlm", "random_qwen2_5_vl": "vlm",
}
__all__ = sorted(_API)


def __getattr__(name):
    if name in _API:
        value = getattr(importlib.import_module(f"{__name__}.{_API[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_API))
