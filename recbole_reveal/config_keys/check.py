"""The one pass that checks a run's keys: unknown keys (an error naming where each was set and the closest
known names; a key only other models read is logged as ignored), each value converted to its declared
type and checked against the schema (:mod:`recbole_reveal.config_keys.schema`), then the relations
between keys. ``Config`` runs it once per run, before any data is read; FVE's settings of a plain dict
run the same pass (:func:`check_values`). Light."""


from recbole_reveal.config_keys.schema import RELATIONS
from recbole_reveal.config_keys.values import check_value
from recbole_reveal.infra.errors import ConfigError


def check_keys(values, sources, known, external):
    """Check a run's config.

    Args:
        values: the merged config (``{key: value}``); converted values are written back.
        sources: ``{key: where it was set}`` (``--key=value``, ``file:line``, ``config_dict``, a property
            file), for the message.
        known: the run's :class:`KnownKeys`.
        external: the keys the user gave (files, dict, command line): only these can be unknown.

    Returns the notes on ignored keys (keys only other models read). Raises :class:`ConfigError`, one
    line naming each bad key and where it was set.
    """
    errors, notes = [], []
    for key in external:
        if not known.knows(key):
            is_error, text = known.problem_with_unknown(key)
            (errors if is_error else notes).append(f"{sources.get(key, key)}: {text}")
    errors += value_problems(values, known.types(), sources, model_keys=known.model)
    if errors:
        raise ConfigError("; ".join(errors))
    return notes


def check_values(values, types, sources=None):
    """The values of ``values`` (converted in place) against their ``types`` (``{key: Declared}``) and
    the schema; raises :class:`ConfigError` naming each bad key. For settings that are not a built
    ``Config`` (FVE's settings of a plain dict)."""
    errors = value_problems(values, types, sources)
    if errors:
        raise ConfigError("; ".join(errors))
    return values


def value_problems(values, types, sources, model_keys=None):
    """One line per bad value of ``values`` (types, ranges, relations); good values are converted in
    place, each line led by where the key was set (``sources``; the key itself when unknown). A relation
    marked ``model_keys`` is checked only for keys in ``model_keys``."""
    errors, bad = [], set()
    where = (lambda key: "") if sources is None else (lambda key: f"{sources.get(key, key)}: ")
    for key in list(values):
        value, problem = check_value(key, values[key], types)
        if problem:
            errors.append(f"{where(key)}{problem}")
            bad.add(key)
        else:
            values[key] = value
    for relation in RELATIONS:
        names = relation.keys
        if relation.model_keys and not all(n in (model_keys or ()) for n in names):
            continue
        if all(n in values and n not in bad for n in names):
            problem = relation.check(*(values[n] for n in names))
            if problem:
                errors.append(f"{', '.join(where(n)[:-2] for n in names)}: {problem}" if sources is not None
                              else problem)
    return errors
