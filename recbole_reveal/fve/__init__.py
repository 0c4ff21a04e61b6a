"""FVE (paper §4.3): initial prompts, the VLM, the prompt-conditioned vision encoder and its caches,
feedback and critic, and the resumable refinement loop ``run_fve`` (recbole_reveal.fve.loop, imported
on use: it pulls in training). See docs/fve.md."""

from recbole_reveal.fve.cache import EmbeddingCache, VisionFeatureCache
from recbole_reveal.fve.config import build_fve_encoder, fve_settings
from recbole_reveal.fve.encoder import (
    POOLINGS, EncodeResult, FVEEncoder, ItemRequest, item_requests, save_encoding,
)
from recbole_reveal.fve.prompts import (
    build_initial_prompts, extract_keywords, load_templates, read_items, read_prompts, render, write_prompts,
)
from recbole_reveal.fve.vlm import (
    LoadedVLM, VLMUnavailable, build_tiny_qwen2_5_vl, build_tiny_qwen3_vl, check_vlm_folder, load_vlm,
    random_qwen2_5_vl,
)

__all__ = [
    "POOLINGS", "EmbeddingCache", "EncodeResult", "FVEEncoder", "ItemRequest", "LoadedVLM", "VLMUnavailable",
    "VisionFeatureCache", "build_fve_encoder", "build_initial_prompts", "build_tiny_qwen2_5_vl",
    "build_tiny_qwen3_vl", "check_vlm_folder", "extract_keywords", "fve_settings", "item_requests",
    "load_templates", "load_vlm", "random_qwen2_5_vl", "read_items", "read_prompts", "render",
    "save_encoding", "write_prompts",
]
