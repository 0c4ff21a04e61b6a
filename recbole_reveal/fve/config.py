"""FVE's configuration keys, validated with errors that name the key.

The keys and their defaults are ``properties/fve/fve.yaml``, one of the property files the one
configuration reader (:mod:`recbole_reveal.config`) loads for ``*_REVEAL`` models: a ``Config`` of such a
model already holds every key. :func:`fve_settings` picks FVE's keys out of a ``Config`` (or of a
plain dict, whose missing keys take the same file's defaults) and checks them. Light: no torch, no
RecBole.
"""

from recbole_reveal.config_keys.check import check_values
from recbole_reveal.config_keys.declared import declared_keys
from recbole_reveal.infra import locations
from recbole_reveal.infra.errors import ConfigError

DEFAULTS_FILE = locations.property_file("fve", "fve.yaml")


def fve_defaults():
    """FVE's keys and their defaults (``properties/fve/fve.yaml``)."""
    return locations.fve_defaults()


def fve_settings(config=None, keys=None):
    """FVE's keys of ``config`` (a ``Config`` or a dict): all of ``fve.yaml``, or only ``keys`` (a part's
    own, e.g. the critic's); a key ``config`` lacks (with ``keys``: or holds as ``~``) takes its default.

    A built ``Config`` has had every key checked once, when it was built (the one pass,
    :mod:`recbole_reveal.config_keys.check`): its values are taken as they are. A plain dict goes through
    the same pass here (types from ``fve.yaml``, ranges, choices and relations from the schema), and an
    ``fve_*`` key in it that FVE does not know is an error (a typo would otherwise be ignored silently).
    """
    defaults = fve_defaults()
    config = config if config is not None else {}
    checked = hasattr(config, "final_config_dict")
    present = config.final_config_dict if checked else config
    if keys is None:
        unknown = sorted(k for k in present if str(k).startswith("fve_") and k not in defaults)
        if unknown:
            raise ConfigError(f"unknown FVE config keys {unknown}; known: {sorted(defaults)} ({DEFAULTS_FILE})")
    settings = {k: defaults[k] for k in (keys or defaults)}
    for key in settings:
        if key in present and not (keys is not None and config[key] is None):
            settings[key] = config[key]
    return settings if checked else check_values(settings, declared_keys(DEFAULTS_FILE))
