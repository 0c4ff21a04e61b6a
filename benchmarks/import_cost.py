"""What importing a module of the package costs: wall seconds, peak RSS, and whether torch / RecBole
came with it, each module in a fresh interpreter (median of ``--repeat`` runs).

    python benchmarks/import_cost.py                       # this checkout
    python benchmarks/import_cost.py --root /path/to/other/checkout --root .   # side by side

With several ``--root`` folders the table has one column pair per root (``PYTHONPATH`` set to it), so
a before/after comparison is one command.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

MODULES = [
    "recbole_reveal",
    "recbole_reveal.infra.errors",
    "recbole_reveal.infra.files",
    "recbole_reveal.data.feature_store",
    "recbole_reveal.fve.config",
    "recbole_reveal.fve.prompts.keywords",
    "recbole_reveal.experiments.runs",
    "recbole_reveal.quick_start",
]
PROBE = r"""
import json, resource, sys, time
t = time.perf_counter()
import importlib; importlib.import_module(sys.argv[1])
dt = time.perf_counter() - t
print(json.dumps({"seconds": dt, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "torch": "torch" in sys.modules, "recbole": "recbole" in sys.modules}))
"""


def measure(module, root, repeat):
    runs = []
    for _ in range(repeat):
        env = dict(os.environ, PYTHONPATH=os.path.abspath(root))
        with tempfile.TemporaryDirectory() as cwd:     # not the checkout: `python -c` imports from its cwd first
            out = subprocess.run([sys.executable, "-c", PROBE, module], capture_output=True, text=True, env=env,
                                 cwd=cwd, timeout=300)
        if out.returncode != 0:
            return None
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return {"seconds": statistics.median(r["seconds"] for r in runs),
            "rss_mb": statistics.median(r["rss_mb"] for r in runs),
            "heavy": "+".join(k for k in ("torch", "recbole") if runs[0][k]) or "-"}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", action="append", help="checkout(s) to import from (default: this one)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--modules", nargs="+", default=MODULES)
    a = p.parse_args(argv)
    roots = a.root or [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
    width = max(len(m) for m in a.modules)
    print(f"{'module':<{width}}" + "".join(f" | {os.path.abspath(r)[-28:]:<28}" for r in roots))
    print(f"{'':<{width}}" + f" | {'s':>5}  {'RSS MB':>7}   {'loads':<13}" * len(roots))
    for module in a.modules:
        cells = []
        for root in roots:
            m = measure(module, root, a.repeat)
            cells.append(" | " + ("failed".rjust(28) if m is None else
                                  f"{m['seconds']:5.2f}  {m['rss_mb']:7.0f}   {m['heavy']:<13}"))
        print(f"{module:<{width}}" + "".join(cells), flush=True)


if __name__ == "__main__":
    main()
