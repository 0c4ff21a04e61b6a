"""The declarative schema of the plugin's config keys: what each key accepts beyond its type.

A key's *type* and *default* are its line in the plugin's YAML files (``# (type) meaning``, RecBole's
convention), and *which model family reads it* is the file that declares it (``overall.yaml``: every
model; ``model/REVEAL.yaml`` and ``fve/fve.yaml``: ``*_REVEAL`` models; ``model/<Class>.yaml``: that
model; :func:`recbole_reveal.config_keys.known.families`). Its *range or choices* are :data:`RANGES`, the
relations between keys :data:`RELATIONS`. Every check of a key's value goes through this table, once
per run (:mod:`recbole_reveal.config_keys.check`). Light: data and small checks; imports only ``infra.errors``.
"""

import math
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

from recbole_reveal.infra.errors import ConfigError

EXTRA_KEYS = "extra_config_keys"
MODALITIES = ("text", "vision")
# Keys earlier versions read: an error saying what replaced them (before the closest-name guess).
REMOVED_KEYS = {
    "avl_sample_fraction": "was removed: the loss of a random part of the batch adds noise 2-3x larger than the "
                           "batch-to-batch variation of L_v - L_t, which exp() turns into an upward bias of K. "
                           "For a cheaper AVL use avl_probe_every: n (probe every n-th whole batch, hold K in "
                           "between; docs/design.md, 'Cheap mode')",
}


@dataclass(frozen=True)
class Range:
    """A number's bounds (``low_open`` / ``high_open``: excluded), or a value's choices, or a custom check
    returning the problem (None when fine)."""

    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    high_open: bool = False
    choices: Optional[Tuple] = None
    check: Optional[Callable] = None

    def problem(self, value):
        if value is None:
            return None
        if self.check is not None:
            return self.check(value)
        if self.choices is not None:
            return None if value in self.choices else f"must be one of {', '.join(map(str, self.choices))}"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return f"must be {'>' if self.low_open else '>='} {self.low}"
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return f"must be {'<' if self.high_open else '<='} {self.high}"
        return None

    def describe(self):
        if self.choices is not None:
            return "one of " + ", ".join(map(str, self.choices))
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {self.low}")
        if self.high is not None:
            parts.append(f"{'<' if self.high_open else '<='} {self.high}")
        return " and ".join(parts)


def _modality_subset(value, non_empty=False):
    ok = isinstance(value, (list, tuple)) and all(m in MODALITIES for m in value) and (value or not non_empty)
    return None if ok else f"must be a {'non-empty ' if non_empty else ''}list drawn from {list(MODALITIES)}, e.g. [vision]"


def _clamp(value):
    if value == "auto":
        return None
    ok = (isinstance(value, (list, tuple)) and len(value) == 2
          and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
          and 0 < value[0] <= 1 <= value[1])
    return None if ok else "must be auto, ~ or [low, high] with 0 < low <= 1 <= high, e.g. [0.1, 10.0]"


def _positive_int_list(value):
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    ok = isinstance(value, (list, tuple)) and value and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
    return None if ok else "must be a positive integer or a list of positive integers, e.g. [10, 20]"


def _fractions(value):
    ok = isinstance(value, (list, tuple)) and all(
        isinstance(r, (int, float)) and not isinstance(r, bool) and 0 <= r <= 1 for r in value)
    return None if ok else "must be a list of fractions in [0, 1], e.g. [0, 0.25, 0.5, 0.75, 1]"


def _scopes(value):
    ok = isinstance(value, (list, tuple)) and value and all(s in ("history", "candidates", "both") for s in value)
    return None if ok else "must be a non-empty list drawn from ['history', 'candidates', 'both']"


def _column_name(value):
    ok = isinstance(value, str) and value and value == value.strip() and not any(c.isspace() for c in value)
    return None if ok else "must name a column of the .inter file"


def _two_cutoffs(value):
    ok = (isinstance(value, (list, tuple)) and len(value) == 2
          and all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in value) and value[0] <= value[1])
    return None if ok else "must be two integers 1 <= k1 <= k2, e.g. [10, 20]"


def _non_empty_str(value):
    return None if isinstance(value, str) and value else "must be a non-empty string or ~"


def endpoint_url_problem(url):
    """Why ``url`` cannot be an OpenAI-compatible base URL (None when it can): the scheme, the host, the
    port and the brackets are read as an HTTP client would, so a URL that cannot work fails here."""
    from urllib.parse import urlsplit

    if not isinstance(url, str) or not url.strip():
        return "must be the server's OpenAI-compatible base URL, such as http://127.0.0.1:8000/v1"
    try:
        parts = urlsplit(url)
        port, host = parts.port, parts.hostname     # ValueError: a port that is not a number, a bad bracket
    except ValueError as e:
        return f"is not a valid URL ({e}); expected one such as http://127.0.0.1:8000/v1"
    if parts.scheme not in ("http", "https"):
        return "must start with http:// or https://, such as http://127.0.0.1:8000/v1"
    if not host or port == 0:
        return f"names {'no host' if not host else 'port 0'}; expected a URL such as http://127.0.0.1:8000/v1"
    if parts.query or parts.fragment:
        return "has a query or fragment; expected the base URL alone, such as http://127.0.0.1:8000/v1"
    return None


POSITIVE = Range(low=0, low_open=True)
NON_NEGATIVE = Range(low=0)
AT_LEAST_ONE = Range(low=1)
PROBABILITY = Range(low=0, high=1, high_open=True)      # a dropout or masking rate

# Ranges of the plugin's keys and of RecBole's that every run uses. A key's *type* is its YAML comment.
RANGES = {
    # REVEAL / AVL (read by the AVLTrainer: checked here, before the dataset loads)
    "avl_alpha": NON_NEGATIVE,
    "avl_clamp": Range(check=_clamp),
    "avl_rule": Range(choices=("paper", "reference", "agm", "ogm_ge", "ckd")),
    "avl_mode": Range(choices=("grad", "lr")),
    "avl_probe_mode": Range(choices=("eval", "train")),
    "avl_probe_every": AT_LEAST_ONE,
    "avl_stacked_probes": Range(check=lambda v: None if v in (True, False, "auto")
                                else "must be auto, true or false"),
    # modalities
    "zeroed_modalities": Range(check=_modality_subset),
    "eval_zeroed_modalities": Range(check=_modality_subset),
    "feature_modalities": Range(check=lambda v: _modality_subset(v, non_empty=True)),
    # items without a modality, the robustness figures (docs/missing-modalities.md)
    "missing_modality": Range(choices=("zero", "learned", "mean")),
    "eval_missing_rates": Range(check=_fractions),
    "eval_missing_modalities": Range(check=lambda v: _modality_subset(v, non_empty=True)),
    "eval_missing_scopes": Range(check=_scopes),
    "eval_missing_seed": NON_NEGATIVE,
    "text_feature_dim": AT_LEAST_ONE,
    "vision_feature_dim": AT_LEAST_ONE,
    # RecBole's training and evaluation
    "seed": Range(low=0, high=2**32 - 1),
    "epochs": AT_LEAST_ONE,
    "train_batch_size": AT_LEAST_ONE,
    "eval_batch_size": AT_LEAST_ONE,
    "learning_rate": POSITIVE,
    "weight_decay": NON_NEGATIVE,
    "stopping_step": AT_LEAST_ONE,
    "eval_step": AT_LEAST_ONE,
    "MAX_ITEM_LIST_LENGTH": AT_LEAST_ONE,
    "topk": Range(check=_positive_int_list),
    "worker": NON_NEGATIVE,
    "state": Range(check=lambda v: None if str(v).lower() in ("debug", "info", "warning", "error", "critical")
                   else "must be one of debug, info, warning, error, critical (any case)"),
    # backbones (M3SRec, STOSA, MISSRec, HM4SR, VBPR, and RecBole's SASRec / BERT4Rec / LightGCN)
    "hidden_size": AT_LEAST_ONE,
    "inner_size": AT_LEAST_ONE,
    "embedding_size": AT_LEAST_ONE,
    "visual_embedding_size": AT_LEAST_ONE,
    "n_layers": AT_LEAST_ONE,
    "n_heads": AT_LEAST_ONE,
    "hidden_dropout_prob": PROBABILITY,
    "attn_dropout_prob": PROBABILITY,
    "dropout_prob": PROBABILITY,
    "mask_ratio": Range(low=0, high=1, low_open=True, high_open=True),
    "ft_ratio": Range(low=0, high=1),
    "layer_norm_eps": POSITIVE,
    "initializer_range": NON_NEGATIVE,
    "pvn_weight": NON_NEGATIVE,
    "n_shared_experts": NON_NEGATIVE,
    "n_specific_experts": AT_LEAST_ONE,
    "gate_low_rank": AT_LEAST_ONE,
    "temperature": POSITIVE,
    "gamma": NON_NEGATIVE,
    "interest_ratio": POSITIVE,
    "interest_kmeans_iters": AT_LEAST_ONE,
    "align_experts": AT_LEAST_ONE,
    "temporal_experts": AT_LEAST_ONE,
    "interval_scale": POSITIVE,
    "time_unit": POSITIVE,
    "id_cl_weight": NON_NEGATIVE,
    "category_weight": NON_NEGATIVE,
    "placeholder_weight": NON_NEGATIVE,
    "placeholder_temperature": POSITIVE,
    "placeholder_ratio": PROBABILITY,
    "reg_weight": NON_NEGATIVE,
    "bias_reg_weight": NON_NEGATIVE,
    "visual_reg_weight": NON_NEGATIVE,
    # UniSRec, MMSBR
    "train_stage": Range(choices=("transductive_ft", "inductive_ft", "pretrain")),
    "n_exps": AT_LEAST_ONE,
    "adaptor_dropout_prob": PROBABILITY,
    "lambda": NON_NEGATIVE,
    "item_drop_ratio": PROBABILITY,
    "item_drop_coefficient": Range(low=0, high=1),
    "duplicate_targets": Range(choices=("exclude", "reference")),
    "n_pivots": AT_LEAST_ONE,
    "n_tokens": AT_LEAST_ONE,
    "token_dropout_prob": PROBABILITY,
    "contrastive_weight": NON_NEGATIVE,
    "num_negatives": AT_LEAST_ONE,
    "price_levels": AT_LEAST_ONE,
    "feature_init": Range(choices=("features", "uniform")),
    "pivot_softmax": Range(choices=("keys", "queries")),
    # FVE
    "fve_cycles": AT_LEAST_ONE,
    "fve_batch_size": AT_LEAST_ONE,
    "fve_min_pixels": AT_LEAST_ONE,
    "fve_max_pixels": AT_LEAST_ONE,
    "fve_preprocess_workers": NON_NEGATIVE,
    "fve_vision_cache_mb": NON_NEGATIVE,
    "fve_keywords_topk": AT_LEAST_ONE,
    "fve_exposure_k": AT_LEAST_ONE,
    "fve_rewrite_fraction": Range(low=0, high=1, low_open=True),
    "fve_rewrite_max_new_tokens": AT_LEAST_ONE,
    "fve_rewrite_batch_size": AT_LEAST_ONE,
    "fve_rewrite_seed": NON_NEGATIVE,
    "fve_vision_cache_disk_mb": NON_NEGATIVE,
    "fve_num_processes": Range(check=lambda v: None if v == "auto" or (
        isinstance(v, int) and not isinstance(v, bool) and v >= 1) else "must be 'auto' or an integer >= 1"),
    "fve_pooling": Range(choices=("image_after_prompt", "text_after_image", "last_token", "reference_image_first")),
    "fve_missing_image": Range(choices=("zero", "random")),
    "fve_keyword_reviews": Range(choices=("exclude_eval", "all")),
    "fve_prompt_scope": Range(choices=("interaction", "item")),
    "fve_history_table_device": Range(choices=("model", "cpu")),
    "fve_dtype": Range(choices=("auto", "bf16", "bfloat16", "fp16", "float16", "fp32", "float32")),
    "fve_vlm_offload": Range(choices=("auto", "cpu", "free", "keep")),
    "fve_attn_implementation": Range(choices=("sdpa", "eager", "flash_attention_2", "auto")),
    "fve_quantization": Range(choices=("4bit", "8bit")),
    "fve_feedback_k": Range(check=_two_cutoffs),
    "fve_acceptance_warning": Range(low=0, high=1),
    "fve_min_acceptance": Range(low=0, high=1),
    "fve_generation_backend": Range(choices=("transformers", "endpoint")),
    "fve_generation_concurrency": AT_LEAST_ONE,
    "fve_generation_timeout": POSITIVE,
    "fve_generation_retries": NON_NEGATIVE,
    "fve_generation_api_key_env": Range(check=_non_empty_str),
    "fve_generation_endpoint": Range(check=endpoint_url_problem),
    "fve_interaction_field": Range(check=_column_name),
    "fve_run_dir": Range(check=_non_empty_str),
    "fve_stop_after": Range(check=_non_empty_str),
    "fve_keyword_cache_dir": Range(check=_non_empty_str),
}


@dataclass(frozen=True)
class Relation:
    """A relation between keys, checked when every one of ``keys`` is present and none of them has a problem of
    its own (``model_keys``: and the run's model reads them all): ``check(*values)`` returns the problem
    (None when fine)."""

    keys: Tuple[str, ...]
    check: Callable
    model_keys: bool = False


def _is_int(*values):
    return all(isinstance(v, int) and not isinstance(v, bool) for v in values)


def _heads_divide(hidden, heads):
    if _is_int(hidden, heads) and hidden > 0 and heads > 0 and hidden % heads:
        return f"hidden_size ({hidden}) must be a multiple of n_heads ({heads})"
    return None


def _pixel_bounds(high, low):
    if _is_int(high, low) and high < low:
        return f"fve_max_pixels ({high}) is below fve_min_pixels ({low})"
    return None


def _exposure_covers_feedback(exposure, feedback_k):
    if _is_int(exposure) and _two_cutoffs(feedback_k) is None and exposure < feedback_k[1]:
        return f"fve_exposure_k must be an integer >= fve_feedback_k[1] ({feedback_k[1]}); got {exposure!r}"
    return None


def _endpoint_given(backend, endpoint):
    if backend == "endpoint" and not (isinstance(endpoint, str) and endpoint.startswith(("http://", "https://"))):
        return ("fve_generation_backend: endpoint needs fve_generation_endpoint, the server's OpenAI-compatible "
                f"base URL such as http://127.0.0.1:8000/v1; got {endpoint!r}")
    return None


def key_variable_problem(backend, env):
    """An endpoint's API key is read from the environment variable ``env``: it must be set (checked with
    the config, not when the critic starts hours later)."""
    import os

    if backend == "endpoint" and isinstance(env, str) and env and not os.environ.get(env):
        return (f"fve_generation_api_key_env names the environment variable {env}, which is not set: export it "
                "with the server's API key, or set the key to ~")
    return None


def _guided_json_needs_endpoint(guided, backend):
    if guided is True and backend != "endpoint":
        return ("fve_generation_guided_json needs fve_generation_backend: endpoint (a server with guided decoding "
                "such as vLLM or SGLang); transformers generate has none")
    return None


def _lr_mode_needs_a_loss_rule(mode, rule):
    if mode == "lr" and rule == "ogm_ge":
        return ("avl_mode: lr is not defined for avl_rule: ogm_ge (its generalisation noise is a gradient term); "
                "use avl_mode: grad")
    return None


RELATIONS = (
    Relation(("hidden_size", "n_heads"), _heads_divide, model_keys=True),
    Relation(("avl_mode", "avl_rule"), _lr_mode_needs_a_loss_rule),
    Relation(("fve_max_pixels", "fve_min_pixels"), _pixel_bounds),
    Relation(("fve_exposure_k", "fve_feedback_k"), _exposure_covers_feedback),
    Relation(("fve_generation_backend", "fve_generation_endpoint"), _endpoint_given),
    Relation(("fve_generation_guided_json", "fve_generation_backend"), _guided_json_needs_endpoint),
    Relation(("fve_generation_backend", "fve_generation_api_key_env"), key_variable_problem),
)


def require(key, value):
    """``value`` unchanged when :data:`RANGES` accepts it for ``key``, else a :class:`ConfigError` naming
    the key (for code that takes a key's value from elsewhere than a checked config)."""
    problem = RANGES[key].problem(value)
    if problem:
        raise ConfigError(f"config key '{key}' {problem}; got {value!r}")
    return value
