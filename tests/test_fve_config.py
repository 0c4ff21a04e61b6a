"""FVE config keys: defaults from properties/fve/fve.yaml, overrides, errors naming the key."""

import pytest

from recbole_reveal.fve.config import DEFAULTS_FILE, fve_settings
from recbole_reveal.fve.encoding.build import build_fve_encoder
from recbole_reveal.fve.vlm.folder import VLMUnavailable
from recbole_reveal.infra.errors import ConfigError
from recbole_reveal.testing.vlms import build_tiny_qwen2_5_vl


def test_defaults_come_from_the_properties_file():
    s = fve_settings()
    assert DEFAULTS_FILE.endswith("properties/fve/fve.yaml")
    assert s["fve_pooling"] == "image_after_prompt" and s["fve_layer"] == -1
    assert s["fve_max_pixels"] == 448 * 448 and s["fve_keywords_topk"] == 5 and s["vlm_path"] is None


def test_overrides_and_validation():
    s = fve_settings({"fve_pooling": "last_token", "fve_max_pixels": None, "epochs": 3})
    assert s["fve_pooling"] == "last_token" and s["fve_max_pixels"] is None
    with pytest.raises(ConfigError, match=r"unknown FVE config keys \['fve_poling'\]"):
        fve_settings({"fve_poling": "last_token"})
    with pytest.raises(ConfigError, match="fve_pooling must be one of .*reference_image_first"):
        fve_settings({"fve_pooling": "mean"})
    with pytest.raises(ConfigError, match="fve_batch_size must be >= 1; got 0"):
        fve_settings({"fve_batch_size": 0})
    with pytest.raises(ConfigError, match="fve_max_pixels .* is below fve_min_pixels"):
        fve_settings({"fve_max_pixels": 100})
    with pytest.raises(ConfigError, match="fve_layer must be an integer"):
        fve_settings({"fve_layer": "last"})


def test_build_encoder_from_settings(tmp_path):
    with pytest.raises(VLMUnavailable, match="no VLM given: set vlm_path"):
        build_fve_encoder(fve_settings())
    folder = build_tiny_qwen2_5_vl(str(tmp_path / "tiny"))
    enc = build_fve_encoder(fve_settings({"vlm_path": folder, "fve_device": "cpu", "fve_pooling": "text_after_image",
                                          "fve_layer": 1, "fve_vision_cache_mb": 1}))
    assert enc.pooling == "text_after_image" and enc.layer == 1 and enc.max_pixels == 448 * 448
    assert enc.vision_cache.max_bytes == 2**20 and enc.vlm.path == folder
