"""FVE (paper §4.3): initial prompts, the VLM, the prompt-conditioned vision encoder and its caches,
feedback and critic, and the resumable refinement loop ``run_fve`` (recbole_reveal.fve.loop.run). See
docs/fve.md.

The names below are imported on first use, so that the light modules (``fve.config``, ``fve.prompts``)
load without torch.
"""

import importlib

# public name -> the module that defines it
_API = {
    "EmbeddingCache": "encoding.cache.embeddings", "VisionFeatureCache": "encoding.cache.vision",
    "fve_settings": "config", "build_fve_encoder": "encoding.build",
    "POOLINGS": "encoding.chat", "EncodeResult": "encoding.encoder", "FVEEncoder": "encoding.encoder",
    "ItemRequest": "encoding.encoder", "item_requests": "encoding.encoder", "save_encoding": "encoding.encoder",
    "build_initial_prompts": "prompts.templates", "extract_keywords": "prompts.keywords",
    "load_templates": "prompts.templates", "read_items": "prompts.records", "read_prompts": "prompts.records",
    "render": "prompts.templates", "write_prompts": "prompts.records",
    "LoadedVLM": "vlm.load", "load_vlm": "vlm.load",
    "VLMFolder": "vlm.folder", "VLMUnavailable": "vlm.folder", "check_vlm_folder": "vlm.folder",
    "run_fve": "loop.run",
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
