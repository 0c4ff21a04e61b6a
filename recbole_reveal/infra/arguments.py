"""The one command-line reader of the entry scripts (``run_recbole_reveal.py``, ``run_hyper.py``) and the
one reader of a config value typed on a command line (also ``run_experiments.py --set`` and the
``cmd_args`` of :class:`recbole_reveal.config.Config`). Light: no torch, no RecBole.

Every item is ``--key=value``. A command declares its own options (:class:`Option`); every other
``--key=value`` is a config override, returned in order for the Config's command-line layer. A
declared option may also be written ``--key value``; ``--config_files`` takes several paths, inside one
argument (``--config_files="a.yaml b.yaml"``, RecBole's form) or as the following arguments.
"""

import ast
import re
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import yaml

from recbole_reveal.infra.errors import ConfigError


class _ConfigValueLoader(yaml.SafeLoader):
    """YAML as RecBole reads its config files: also ``1e-3`` (no dot) is a float."""


_ConfigValueLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                   |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                   |\.[0-9_]+(?:[eE][-+][0-9]+)?
                   |[-+]?\.(?:inf|Inf|INF)
                   |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def config_value(text):
    """A value typed on a command line, read as the same text in a config file would be (YAML:
    ``5``, ``0.05``, ``1e-3``, ``False``, ``~``, ``[text]``, ``{a: 1}``), and Python literals as RecBole's
    own command line reads them (``None``, ``['text']``, ``(1, 2)``). Anything else stays a string."""
    if not isinstance(text, str):
        return text
    try:
        value = yaml.load(text, Loader=_ConfigValueLoader)
    except yaml.YAMLError:
        value = text
    if isinstance(value, str):
        try:
            literal = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            return value
        if literal is None or isinstance(literal, (bool, int, float, list, tuple, dict)):
            return literal
    return value


def split_override(item):
    """``"--key=value"`` -> ``(key, value text)``; anything else is a :class:`ConfigError`."""
    key, sep, value = item[2:].partition("=") if item.startswith("--") else ("", "", "")
    if not sep or not key:
        raise ConfigError(f"'{item}' is not of the form --key=value")
    return key, value


def parse_overrides(items):
    """``["--key=value", ...]`` -> ``{key: config_value(value)}``; a key given twice with different
    values is an error."""
    out, raw = {}, {}
    for item in items or ():
        key, text = split_override(item)
        if key in raw and raw[key] != text:
            raise ConfigError(f"--{key} is given twice with different values ({raw[key]!r}, {text!r})")
        raw[key] = text
        out[key] = config_value(text)
    return out


@dataclass
class Option:
    """A command's own ``--name=value`` option (the rest are config overrides)."""

    name: str
    default: Any = None
    type: Callable = str
    required: bool = False
    choices: Optional[Sequence] = None
    many: bool = False          # several space-separated values (``--config_files``)
    help: str = ""


class UsageError(SystemExit):
    """A malformed command line: exit status 2 (as argparse's); ``str()`` is the message, which starts
    with ``error:`` (after the command's help when it was given). The commands print it to stderr."""

    def __init__(self, message):
        super().__init__(2)
        self.message = f"error: {message}"

    def __str__(self):
        return self.message


def parse_command_line(argv, options, usage=None):
    """Split ``argv`` into ``(values, overrides)``: ``values`` maps every declared option to its value
    (default when absent), ``overrides`` lists the other ``--key=value`` items, in order.

    Raises :class:`UsageError` (a ``SystemExit``) for an item not of the form ``--key=value``, a missing
    required option (after ``usage``, the command's help, when given) or a value outside an option's
    choices.
    """
    declared = {o.name: o for o in options}
    values = {o.name: ([] if o.many else o.default) for o in options}
    given, overrides = set(), []
    collecting = None           # a many-valued option that takes the following plain arguments
    pending = None              # a declared option written "--name value": the next argument is its value
    for arg in argv:
        if pending is not None:
            _set(values, pending, arg)
            pending = None
            continue
        if not arg.startswith("--"):
            if collecting is not None:
                values[collecting.name] += arg.split()
                continue
            raise UsageError(f"unexpected argument '{arg}'; options are written --key=value")
        collecting = None
        key, sep, value = arg[2:].partition("=")
        option = declared.get(key)
        if option is None:
            if not sep or not key:
                raise UsageError(f"'{arg}' is not of the form --key=value")
            overrides.append(arg)
            continue
        given.add(key)
        if option.many:
            values[key] += value.split()
            collecting = option
        elif sep:
            _set(values, option, value)
        else:
            pending = option
    if pending is not None:
        raise UsageError(f"write --{pending.name}=VALUE")
    missing = [f"--{o.name}" for o in options if o.required and (o.name not in given or not values[o.name])]
    if missing:
        error = UsageError(f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} required")
        if usage:
            error.message = f"{usage.strip()}\n\n{error.message}"
        raise error
    return values, overrides


def _set(values, option, text):
    try:
        value = option.type(text)
    except ValueError as e:
        raise UsageError(f"--{option.name}={text}: {e}") from e
    if option.choices is not None and value not in option.choices:
        raise UsageError(f"--{option.name} must be one of {', '.join(map(str, option.choices))}; got {text!r}")
    values[option.name] = value


def format_options(options):
    """One help line per option: ``--name=VALUE  help (default ...)``."""
    lines = []
    for o in options:
        value = "PATH [PATH ...]" if o.many else ("|".join(map(str, o.choices)) if o.choices else o.name.upper())
        note = " (required)" if o.required else ("" if o.default is None else f" (default {o.default})")
        lines.append(f"  --{o.name}={value}\n      {o.help}{note}")
    return "\n".join(lines)
