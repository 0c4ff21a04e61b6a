"""What a run's configuration was made of, for its log: every property file read in precedence order,
the model-YAML values that a later source replaced, and your own model's YAML that was looked for and
not found (docs/usage.md, "Configuration precedence").

RecBole's order is model YAML < dataset YAML < ``--config_files`` < ``config_dict`` < command line, so a
``hidden_size`` in a config file (or in a dataset's YAML) replaces the one in a model's own YAML. That is
expected; the log says so once per key, naming both files.
"""

import os

import yaml

from recbole_reveal.infra import locations

PRECEDENCE = "model YAML < dataset YAML < --config_files < config_dict < command line"


def role(config, path):
    """What a property file read by ``config`` is, for the log: ``RecBole default``, ``RecBole model``,
    ``plugin default``, ``FVE default``, ``model`` or ``dataset``."""
    path = os.path.abspath(path)
    if path == os.path.abspath(getattr(config, "dataset_yaml_file", None) or ""):
        return "dataset, beside its data"
    if path in {os.path.abspath(p) for _, p, _ in own_model_yamls(config.model_class)}:
        return "model"
    recbole_dir = os.path.dirname(os.path.abspath(_recbole_file()))
    if path.startswith(recbole_dir + os.sep):
        return "RecBole model" if f"{os.sep}model{os.sep}" in path else "RecBole default"
    props = os.path.abspath(locations.properties_dir())
    named = {os.path.join(props, "overall.yaml"): "plugin default", os.path.join(props, "fve", "fve.yaml"): "FVE default"}
    if path in named:
        return named[path]
    return "dataset" if path.startswith(os.path.join(props, "dataset") + os.sep) else "model"


def _recbole_file():
    import recbole

    return recbole.__file__


def own_model_yamls(model_class):
    """``[(class name, YAML path looked for, found)]`` for the classes of your own file in the model's
    hierarchy (none for the plugin's and RecBole's models)."""
    from recbole.model.abstract_recommender import AbstractRecommender

    from recbole_reveal.config import _model_yaml_dir

    out = []
    for cls in reversed(model_class.__mro__):
        if cls.__module__.startswith(("recbole.", "recbole_reveal.")) or not (
                isinstance(cls, type) and issubclass(cls, AbstractRecommender)):
            continue
        path = os.path.join(_model_yaml_dir(cls), f"{cls.__name__}.yaml")
        out.append((cls.__name__, path, os.path.isfile(path)))
    return out


def missing_yaml_warning(model_class):
    """A warning naming the ``<Class>.yaml`` files looked for when none of your own model's classes has
    one beside its file (then its keys come only from the dataset YAML, config files and command line);
    ``None`` otherwise."""
    own = own_model_yamls(model_class)
    if not own or any(found for _, _, found in own):
        return None
    looked = [path for _, path, _ in own]
    folders = sorted({os.path.dirname(p) for p in looked})
    nearby = sorted(f for d in folders if os.path.isdir(d) for f in os.listdir(d) if f.endswith((".yaml", ".yml")))
    hint = (f"; YAML files there: {', '.join(nearby)} (the name must be <Class>.yaml, e.g. "
            f"{os.path.basename(looked[0])})") if nearby else ""
    return (f"no YAML of your own model {model_class.__name__}: looked for {' and '.join(looked)}{hint}. "
            "Its keys come only from the dataset YAML, --config_files and the command line")


def _file_values(config, path):
    try:
        with open(path, encoding="utf-8") as f:
            values = yaml.load(f.read(), Loader=config.yaml_loader)
    except (OSError, yaml.YAMLError):
        return {}
    return values if isinstance(values, dict) else {}


def layers(config):
    """``[(source, role, {key: value})]`` of a built config, lowest precedence first."""
    out = [(os.path.normpath(path), role(config, path), _file_values(config, path)) for path in config.files_read]
    for path in config.config_files:
        out.append((path, "--config_files", _file_values(config, path)))
    if config.variable_config_dict:
        out.append((f"config_dict ({', '.join(config.variable_config_dict)})", "config_dict",
                    dict(config.variable_config_dict)))
    if config.cmd_config_dict:
        given = " ".join(f"--{k}={v}" for k, v in config.cmd_config_dict.items())
        out.append((f"the command line ({given})", "command line", dict(config.cmd_config_dict)))
    return out


def overridden_model_keys(config):
    """``[(key, final value, source, role, replaced value, model YAML)]``: keys a model YAML sets whose
    value a later source (dataset YAML, config file, config_dict, command line) replaced."""
    stack = layers(config)
    out = []
    for n, (path, kind, values) in enumerate(stack):
        if kind != "model":
            continue
        for key, value in values.items():
            later = [(src, r, v[key]) for src, r, v in stack[n + 1:] if key in v]
            if not later or later[-1][1] == "model":
                continue
            src, r, final = later[-1]
            if final != value:
                out.append((key, final, src, r, value, path))
    return out


def report(config):
    """``[(level, line)]`` for the run log: the files read, in order, and the notes above."""
    lines = [("info", f"property files read, lowest precedence first ({PRECEDENCE}; a later file "
                      "replaces a key of an earlier one):")]
    for n, (source, kind, _) in enumerate(layers(config), 1):
        lines.append(("info", f"  {n}. [{kind}] {source}"))
    for key, final, source, kind, value, path in overridden_model_keys(config):
        lines.append(("info", f"{key} = {final!r} from {source} ({kind}) replaces {value!r} of the model YAML {path}: "
                              f"RecBole's order ({PRECEDENCE}); remove it from {source} to keep the model's value"))
    warning = missing_yaml_warning(config.model_class)
    if warning:
        lines.append(("warning", warning))
    return lines
