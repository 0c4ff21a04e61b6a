"""Switches between the default model and what the authors' code computes (``reference_mode``).

Every backbone here defaults to the paper's model with the reference code's bugs fixed. Where the
reference code computes something else, a named switch restores it; ``reference_mode: True`` turns
all of a backbone's switches to the reference behaviour at once. A switch left at ``~`` in the YAML
follows ``reference_mode``; an explicit value wins over it (e.g. reference mode with one bug fixed).
docs/differences.md lists every switch with the difference it restores and its expected impact.
"""

from recbole_reveal.infra.errors import ConfigError


def reference_switch(config, key, default, reference, allowed):
    """The value of switch ``key``: its own value if set, else ``reference`` under ``reference_mode``
    and ``default`` otherwise; an error naming the key when the value is not in ``allowed``."""
    value = config[key]
    if value is None:
        value = reference if config["reference_mode"] else default
    if value not in allowed:
        raise ConfigError(
            f"config key '{key}' must be one of {list(allowed)} (or ~ to follow reference_mode), got {value!r}"
        )
    return value
