"""FVE's initial prompts (paper §4.3.3): item metadata + review keywords (:mod:`.keywords`) -> one
prompt per item, through the templates.

Prompts come from the templates in ``properties/fve/templates.yaml`` (see there): ``{title}``,
``{category}`` (most specific category, i.e. the last of ``categories``), ``{categories}``,
``{brand}``, ``{keywords}`` (", "-joined), ``{item_id}``. ``token_seq`` fields are space-separated
tokens in which ``_`` stands for a space.
"""

import logging
import os
import string

import yaml

from recbole_reveal.infra import locations
from recbole_reveal.infra.errors import ConfigError
from recbole_reveal.fve.prompts.keywords import item_keywords, load_stop_words
from recbole_reveal.fve.prompts.records import read_items

logger = logging.getLogger(__name__)

DEFAULT_TEMPLATES = locations.property_file("fve", "templates.yaml")
ITEM_FIELDS = ("title", "category", "categories", "brand", "keywords", "item_id")
# template key -> the placeholders it may use (None: a mapping or number, not a template)
TEMPLATE_FIELDS = {
    "initial_prompt": ITEM_FIELDS,
    "initial_prompt_no_keywords": ITEM_FIELDS,
    "evaluation_instruction": (),
    "rewrite_instruction": ("evaluation_instruction", "prompt", "title", "category", "brand",
                            "review_summary", "feedback", "goal", "max_words"),
    "empty_field": None,
    "rewrite_goals": None,
    "rewrite_max_words": None,
}


def template_fields(template):
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


def load_templates(path=None):
    """The templates file (default ``properties/fve/templates.yaml``), checked: every key of
    :data:`TEMPLATE_FIELDS` present, placeholders allowed, goals ``pos`` and ``neg``."""
    path = path or DEFAULT_TEMPLATES
    if not os.path.isfile(path):
        raise ConfigError(f"fve_templates: file not found: {path}")
    with open(path, encoding="utf-8") as f:
        templates = yaml.safe_load(f) or {}
    missing = [k for k in TEMPLATE_FIELDS if k not in templates]
    if missing:
        raise ConfigError(f"{path}: missing template keys {missing}")
    for key, allowed in TEMPLATE_FIELDS.items():
        if allowed is None:
            continue
        if not isinstance(templates[key], str) or not templates[key].strip():
            raise ConfigError(f"{path}: {key} must be a non-empty string")
        try:
            used = template_fields(templates[key])
        except ValueError as e:
            raise ConfigError(f"{path}: {key} is not a valid template ({e})") from e
        bad = sorted(f for f in used if f not in allowed)
        if bad:
            raise ConfigError(f"{path}: {key} uses unknown placeholders {bad}; allowed: {sorted(allowed)}")
    if not isinstance(templates["empty_field"], dict):
        raise ConfigError(f"{path}: empty_field must be a mapping (title/category/brand -> text)")
    goals = templates["rewrite_goals"]
    if not isinstance(goals, dict) or set(goals) != {"pos", "neg"}:
        raise ConfigError(f"{path}: rewrite_goals must have exactly the keys pos and neg")
    if not isinstance(templates["rewrite_max_words"], int) or templates["rewrite_max_words"] < 1:
        raise ConfigError(f"{path}: rewrite_max_words must be a positive integer")
    templates["_path"] = path
    return templates


def render(templates, key, **fields):
    """Fill template ``key``; every placeholder it uses must be given."""
    template = templates[key]
    missing = sorted(template_fields(template) - set(fields))
    if missing:
        raise ValueError(f"template {key} ({templates.get('_path')}) needs {missing}")
    return template.format(**fields)


def item_fields(item, keywords, templates):
    """The placeholder values of ``item`` (empty values replaced by ``empty_field``)."""
    empty = templates["empty_field"]
    category = item.categories[-1] if item.categories else ""
    return {"title": item.title or empty.get("title", ""),
            "category": category or empty.get("category", ""),
            "categories": ", ".join(item.categories) or empty.get("category", ""),
            "brand": item.brand or empty.get("brand", ""),
            "keywords": ", ".join(keywords), "item_id": item.item_id}


def initial_prompt(item, keywords, templates):
    key = "initial_prompt" if keywords else "initial_prompt_no_keywords"
    return " ".join(render(templates, key, **item_fields(item, keywords, templates)).split())


def build_initial_prompts(dataset, data_path, templates=None, top_k=5, reviews="exclude_eval", stop_words=None,
                          keyword_cache=None):
    """One record per item of ``<data_path>/<dataset>/<dataset>.item``, in file order:
    ``{"item_id", "prompt", "keywords"}``. ``keyword_cache``: a folder for :func:`item_keywords`'
    content-keyed cache (None: count the reviews every time)."""
    templates = templates if isinstance(templates, dict) else load_templates(templates)
    stop_words = stop_words if isinstance(stop_words, frozenset) else load_stop_words(stop_words)
    if int(top_k) < 1:
        raise ConfigError(f"fve_keywords_topk must be >= 1, got {top_k}")
    items = read_items(os.path.join(data_path, dataset, f"{dataset}.item"))
    keywords = item_keywords(dataset, data_path, int(top_k), reviews, stop_words, cache_dir=keyword_cache)
    records = [{"item_id": it.item_id, "prompt": initial_prompt(it, keywords.get(it.item_id, []), templates),
                "keywords": keywords.get(it.item_id, [])} for it in items]
    without = sum(1 for r in records if not r["keywords"])
    if without:
        logger.info("%d of %d items have no review keywords (initial_prompt_no_keywords)", without, len(records))
    return records
