"""FVE's configuration keys, validated with errors that name the key.

The keys and their defaults are ``properties/fve/fve.yaml``, one of the property files the one
configuration reader (:mod:`recbole_reveal.config`) loads for ``*_REVEAL`` models: a ``Config`` of such a
model already holds every key. :func:`fve_settings` picks FVE's keys out of a ``Config`` (or of a
plain dict, whose missing keys take the same file's defaults) and checks them. Light: no torch, no
RecBole.
"""

from recbole_reveal import locations
from recbole_reveal.errors import ConfigError

DEFAULTS_FILE = locations.property_file("fve", "fve.yaml")

_CHOICES = {
    "fve_pooling": ("image_after_prompt", "text_after_image", "last_token", "reference_image_first"),
    "fve_missing_image": ("zero", "random"),
    "fve_keyword_reviews": ("exclude_eval", "all"),
    "fve_prompt_scope": ("interaction", "item"),
    "fve_history_table_device": ("model", "cpu"),
    "fve_dtype": ("auto", "bf16", "bfloat16", "fp16", "float16", "fp32", "float32"),
    "fve_vlm_offload": ("auto", "cpu", "free", "keep"),
}
_POSITIVE_INT = ("fve_batch_size", "fve_keywords_topk", "fve_min_pixels", "fve_cycles")
_OPTIONAL_POSITIVE_INT = ("fve_max_pixels",)
_NON_NEGATIVE_INT = ("fve_vision_cache_mb", "fve_vision_cache_disk_mb", "fve_preprocess_workers")


def fve_defaults():
    """FVE's keys and their defaults (``properties/fve/fve.yaml``)."""
    return locations.fve_defaults()


def fve_settings(config=None):
    """FVE's keys of ``config`` (a ``Config`` or a dict; a key it lacks takes its default), validated.

    An ``fve_*`` key in ``config`` that is not a known key is an error (a typo would otherwise be
    ignored silently).
    """
    settings = fve_defaults()
    config = config if config is not None else {}
    keys = getattr(config, "final_config_dict", config)
    unknown = sorted(k for k in keys if str(k).startswith("fve_") and k not in settings)
    if unknown:
        raise ConfigError(f"unknown FVE config keys {unknown}; known: {sorted(settings)} ({DEFAULTS_FILE})")
    for key in settings:
        if key in keys:
            settings[key] = config[key]
    for key, choices in _CHOICES.items():
        if settings[key] not in choices:
            raise ConfigError(f"{key} must be one of {', '.join(choices)}; got {settings[key]!r}")
    for key in _POSITIVE_INT + _OPTIONAL_POSITIVE_INT + _NON_NEGATIVE_INT:
        value = settings[key]
        if value is None and key in _OPTIONAL_POSITIVE_INT:
            continue
        low = 0 if key in _NON_NEGATIVE_INT else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"{key} must be an integer >= {low}; got {value!r}")
    field = settings["fve_interaction_field"]
    if not isinstance(field, str) or not field or field != field.strip() or any(c.isspace() for c in field):
        raise ConfigError(f"fve_interaction_field must name a column of the .inter file; got {field!r}")
    for key in ("fve_run_dir", "fve_stop_after", "fve_keyword_cache_dir"):
        if settings[key] is not None and (not isinstance(settings[key], str) or not settings[key]):
            raise ConfigError(f"{key} must be a non-empty string or ~; got {settings[key]!r}")
    procs = settings["fve_num_processes"]
    if procs != "auto" and (isinstance(procs, bool) or not isinstance(procs, int) or procs < 1):
        raise ConfigError(f"fve_num_processes must be 'auto' or an integer >= 1; got {procs!r}")
    if not isinstance(settings["fve_warm_start"], bool):
        raise ConfigError(f"fve_warm_start must be True or False; got {settings['fve_warm_start']!r}")
    if not isinstance(settings["fve_layer"], int) or isinstance(settings["fve_layer"], bool):
        raise ConfigError(f"fve_layer must be an integer; got {settings['fve_layer']!r}")
    if settings["fve_max_pixels"] is not None and settings["fve_max_pixels"] < settings["fve_min_pixels"]:
        raise ConfigError(f"fve_max_pixels ({settings['fve_max_pixels']}) is below fve_min_pixels "
                          f"({settings['fve_min_pixels']})")
    return settings
