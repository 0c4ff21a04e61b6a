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


def _model_keys():
    """Every key of the REVEAL and backbone property files: each changes what a run trains."""
    import glob
    import os

    import yaml

    keys = set()
    for path in glob.glob(os.path.join(os.path.dirname(DEFAULTS_FILE), "..", "model", "*.yaml")):
        with open(path, encoding="utf-8") as f:
            keys |= set(yaml.safe_load(f) or {})
    return sorted(keys)


@pytest.mark.parametrize("key", ["avl_alpha", "avl_clamp", "avl_mode", "avl_probe_mode", "avl_probe_every", "avl",
                                 "avl_rule"])
def test_a_changed_avl_key_refuses_the_finished_stages(tmp_path, key):
    """A rerun with another alpha (or any AVL key) must not resume stages trained with the old one."""
    from types import SimpleNamespace

    from recbole_reveal.fve.loop.run_state import RunState, fingerprint_config

    base = {"model": "M3SRec_REVEAL", "avl": True, "avl_alpha": 0.1, "avl_clamp": [0.1, 10.0], "avl_mode": "grad",
            "avl_probe_mode": "eval", "avl_probe_every": 1, "avl_rule": "paper"}
    changed = dict(base, **{key: {"avl_alpha": 0.5, "avl_clamp": None, "avl_mode": "lr", "avl_probe_mode": "train",
                                  "avl_probe_every": 2, "avl": False, "avl_rule": "reference"}[key]})
    run = RunState(str(tmp_path), *fingerprint_config(SimpleNamespace(final_config_dict=base), {}))
    run.finish("init", {}, [])
    with pytest.raises(ConfigError, match=rf"changed keys: \['{key}'\]"):
        RunState(str(tmp_path), *fingerprint_config(SimpleNamespace(final_config_dict=changed), {}))


def test_no_model_or_avl_key_is_ignored_by_the_run_fingerprint():
    from types import SimpleNamespace

    from recbole_reveal.fve.loop.run_state import fingerprint_config

    keys = _model_keys()
    assert {"avl_alpha", "avl_clamp", "hidden_size", "pvn_weight"} <= set(keys)
    _, base = fingerprint_config(SimpleNamespace(final_config_dict={k: 1 for k in keys}), {})
    same = [k for k in keys
            if fingerprint_config(SimpleNamespace(final_config_dict=dict({k: 1 for k in keys}, **{k: 2})), {})[1] == base]
    assert same == []
