"""A YAML file's problems and key lines, as the messages that name ``file:line`` need them. Light."""

import yaml


def yaml_problem(error, path):
    """``path:line:column: YAML syntax error: ...`` (1-based) for a PyYAML error, on one line."""
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    context, context_mark = getattr(error, "context", None), getattr(error, "context_mark", None)
    if context and context_mark is not None and context_mark is not mark:
        context += f" (started at line {context_mark.line + 1}, column {context_mark.column + 1})"
    what = ", ".join(str(p) for p in (context, getattr(error, "problem", None)) if p)
    return f"{where}: YAML syntax error: {what or error}"


def key_lines(text):
    """``{top-level key: 1-based line}`` of a YAML document (keys whose line cannot be told are left out)."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return {}
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {k.value: k.start_mark.line + 1 for k, _ in node.value if isinstance(k, yaml.ScalarNode)}
