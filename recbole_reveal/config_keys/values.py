"""A value converted to its declared type (``(bool)`` accepts true/false/yes/no/on/off/1/0 in any case,
``(int)`` an integral float such as HyperTuning's ``64.0``, ``(float)`` a finite number, ``(str)``,
``(list)``, ``(dict)``; ``~`` only where the key's default is ``~`` or its comment says what ``~`` means),
then checked against the schema's range. Light."""

import math

from recbole_reveal.config_keys.schema import RANGES

TRUE_WORDS = ("true", "yes", "on", "1")
FALSE_WORDS = ("false", "no", "off", "0")


def coerce(key, value, declared):
    """``value`` converted to ``declared``'s type: returns ``(value, problem)`` (problem None when fine)."""
    if value is None:
        return value, (None if declared.none_ok else f"{key} must be set (got ~)")
    problems = []
    for kind in declared.types:
        converted, problem = _COERCE[kind](value)
        if problem is None:
            return converted, None
        problems.append(problem)
    if not problems:
        return value, None
    return value, f"{key} must be {' or '.join(problems)}; got {value!r}"


def _as_bool(value):
    if isinstance(value, bool):
        return value, None
    if isinstance(value, int) and value in (0, 1):
        return bool(value), None
    if isinstance(value, str) and value.strip().lower() in TRUE_WORDS + FALSE_WORDS:
        return value.strip().lower() in TRUE_WORDS, None
    return value, "true or false (also yes/no, on/off, 1/0)"


def _as_int(value):
    if isinstance(value, int) and not isinstance(value, bool):
        return value, None
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value), None
    return value, "an integer"


def _as_float(value):
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if math.isfinite(value):
            return value, None
        return value, "a finite number"
    return value, "a number"


def _as_str(value):
    if isinstance(value, str):
        return value, None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value), None
    return value, "a string"


def _as_list(value):
    if isinstance(value, (list, tuple)):
        return list(value), None
    return value, "a list (e.g. [a, b])"


def _as_dict(value):
    if isinstance(value, dict):
        return value, None
    return value, "a mapping (e.g. {a: 1})"


_COERCE = {"bool": _as_bool, "int": _as_int, "float": _as_float, "str": _as_str, "list": _as_list,
           "dict": _as_dict}


def check_value(key, value, types):
    """``(value, problem)``: ``value`` of ``key`` converted to its declared type and checked against
    :data:`RANGES`."""
    declared = types.get(key)
    if declared is not None:
        value, problem = coerce(key, value, declared)
        if problem:
            return value, problem
    rng = RANGES.get(key)
    if rng is not None:
        problem = rng.problem(value)
        if problem:
            return value, f"{key} {problem}; got {value!r}"
    return value, None
