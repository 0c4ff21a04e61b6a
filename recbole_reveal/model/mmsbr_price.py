"""MMSBR's numerical item information: a price level per item, within its category, from the dataset's
``.item`` file (the reference's preprocessing: ``level = int((p - min_c) / (max_c - min_c) * (P - 1)) + 1``
with ``min_c``, ``max_c`` the lowest and highest price of the item's category ``c``, its last category)."""

import logging
import math
import os
from typing import NamedTuple

import torch

from recbole_reveal.data.atomic import read_atomic
from recbole_reveal.infra.errors import ConfigError

logger = logging.getLogger(__name__)


class PriceTable(NamedTuple):
    levels: torch.Tensor        # [n_items] long: 1..n_levels, 0 = no usable price (or padding)
    categories: torch.Tensor    # [n_items] long: 1..n_categories, 0 = padding
    n_levels: int
    n_categories: int


def _price(text):
    try:
        value = float(text.replace("$", "").replace(",", "").strip())
    except ValueError:
        return None
    return value if math.isfinite(value) and value > 0 else None


def item_price_table(dataset, price_field, category_field, n_levels):
    """The dataset's :class:`PriceTable` in RecBole's item ids, or None (logged) when its ``.item`` file or
    the file's ``price_field`` column is missing: MMSBR then scores by interest only. Items without a
    usable price (empty, not a positive number) or whose category has a single price get level 0, the
    zero embedding (the reference drops such items from its data). Without ``category_field`` in the file
    all items share one category."""
    if not (isinstance(n_levels, int) and n_levels >= 1):
        raise ConfigError(f"config key 'price_levels' must be an integer >= 1, got {n_levels!r}")
    path = os.path.join(dataset.dataset_path, f"{dataset.dataset_name}.item")
    columns = read_atomic(path)[0] if os.path.isfile(path) else []
    if price_field not in columns:
        logger.warning(f"MMSBR: {path} has no '{price_field}' column (config key 'price_field'): no price branch, "
                       "items are scored by interest only")
        return None
    columns, _, rows = read_atomic(path)
    item_col, price_col = columns.index(dataset.iid_field), columns.index(price_field)
    cat_col = columns.index(category_field) if category_field in columns else None
    by_token = {}
    for row in rows:
        category = row[cat_col].split()[-1] if cat_col is not None and row[cat_col].strip() else ""
        by_token[row[item_col]] = (_price(row[price_col]), category)
    id2token = dataset.field2id_token[dataset.iid_field]
    entries = [by_token.get(str(t), (None, "")) for t in id2token[1:]]
    category_ids = {c: k + 1 for k, c in enumerate(sorted({c for _, c in entries}))}
    bounds = {}
    for price, category in entries:
        if price is not None:
            low, high = bounds.get(category, (price, price))
            bounds[category] = (min(low, price), max(high, price))
    levels = [0]
    for price, category in entries:
        low, high = bounds.get(category, (0.0, 0.0))
        levels.append(0 if price is None or high == low else int((price - low) / (high - low) * (n_levels - 1)) + 1)
    unpriced = sum(1 for level in levels[1:] if level == 0)
    logger.info(f"MMSBR prices: {path}, {len(entries) - unpriced} of {len(entries)} items priced, "
                f"{len(category_ids)} categories, {n_levels} levels")
    return PriceTable(torch.tensor(levels), torch.tensor([0] + [category_ids[c] for _, c in entries]),
                      n_levels, len(category_ids))
