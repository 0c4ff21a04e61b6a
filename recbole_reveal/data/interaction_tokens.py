"""Tokens naming the interactions (rows) of a ``.inter`` file when it has no column of its own for them:
``<user>:<item>:<timestamp>``, derived the same way by FVE (reading the file as text) and by the dataset
hook (reading it through RecBole, timestamps as floats). Light: standard library only."""

import math
from collections import Counter


def format_timestamp(value):
    """A timestamp as it appears in a derived token: integral values without a decimal point, others in
    Python's shortest round-trip form, missing ones empty (the same whether read as text or as float)."""
    if value is None or value == "":
        return ""
    value = float(value)
    if math.isnan(value):
        return ""
    return str(int(value)) if value.is_integer() else repr(value)


def derive_tokens(users, items, timestamps):
    """One token per row, ``<user>:<item>:<timestamp>``, with ``#k`` on the k-th repeat (k >= 2), in row
    order: deterministic, unique, and readable."""
    tokens, seen = [], Counter()
    for user, item, ts in zip(users, items, timestamps):
        token = " ".join(f"{user}:{item}:{format_timestamp(ts)}".split())
        seen[token] += 1
        tokens.append(token if seen[token] == 1 else f"{token}#{seen[token]}")
    return tokens
