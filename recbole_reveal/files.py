"""Small file helpers shared by the run records, the cost reports and the FVE run folder."""

import json
import os


def write_json_atomic(path, obj, indent=2, sort_keys=False):
    """Write ``obj`` as JSON so that a reader (or a killed run) never sees a half-written file:
    a temporary file in the same folder, flushed to disk, then renamed over ``path``."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=indent, sort_keys=sort_keys)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path
