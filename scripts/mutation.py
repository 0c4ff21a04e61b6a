"""Mutation testing of one module with mutmut, against the small test files that pin it.

    pip install -c constraints.txt -e ".[dev]"          # mutmut (a dev extra, not in CI's path)
    python scripts/mutation.py --list                   # the module -> tests map
    python scripts/mutation.py avl                      # mutate recbole_reveal/trainer/avl.py
    python scripts/mutation.py feedback --ref 460d284   # sources and tests as of a commit ("before")
    python scripts/mutation.py recbole_reveal/fve/encoding/cache/embeddings.py --tests tests/test_fve_cache.py

Each run works in its own scratch copy of the repository (``build/mutation/<key>[-<ref>]``; the
working tree itself is never mutated), writes a ``[mutmut]`` section into that copy's setup.cfg,
runs ``mutmut run`` under ``nice`` with one worker by default (``--max-children``), and prints the
score and every surviving mutant's diff; ``report.md`` and ``summary.json`` in the scratch folder
keep them. Re-running the same key resumes: mutmut only re-tests mutants of functions that changed.

Score = (killed + timeout) / (all mutants - skipped). Mutants that no selected test reaches
("no tests") count as survivors. mutmut does not mutate decorated functions (``@contextmanager``,
``@property``, ``@torch.no_grad()``...), so those are outside every score (docs/testing.md).
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# module key -> (file to mutate, test selection). The selection is pytest arguments: the small test
# files that pin the module; `-k` leaves out end-to-end runs that only repeat what faster tests check.
MODULES = {
    "avl": ("recbole_reveal/trainer/avl.py",
            ["tests/test_avl.py", "tests/test_wiring_probes.py", "-k", "not alpha_zero and not avl_off"]),
    "masking": ("recbole_reveal/model/abstract_recommender.py",
                ["tests/test_m3srec.py", "tests/test_wiring_probes.py", "tests/test_mutation_survivors.py",
                 "-k", "not learns and not same_config"]),
    "m3srec": ("recbole_reveal/model/sequential_recommender/m3srec.py",
               ["tests/test_m3srec.py", "tests/test_parity_stosa_m3srec.py", "tests/test_wiring_probes.py", "-k", "not learns and not same_config"]),
    "feature_store": ("recbole_reveal/data/feature_store.py",
                      ["tests/test_dataset_hook.py", "tests/test_wiring_swaps.py", "tests/test_mutation_survivors.py"]),
    "feedback": ("recbole_reveal/fve/feedback/rankings.py",
                 ["tests/test_fve_feedback.py", "tests/test_wiring_swaps.py", "tests/test_mutation_survivors.py"]),
    "critic": ("recbole_reveal/fve/critic/critic.py",
               ["tests/test_fve_critic.py", "tests/test_wiring_fve.py", "tests/test_mutation_survivors.py",
                "-k", "not feedback_ranks"]),
    "cache": ("recbole_reveal/fve/encoding/cache/embeddings.py",
              ["tests/test_fve_cache.py", "tests/test_mutation_survivors.py"]),
    "prompts": ("recbole_reveal/fve/prompts/keywords.py",
                ["tests/test_fve_prompts.py", "tests/test_wiring_fve.py", "tests/test_mutation_survivors.py",
                 "-k", "not feedback_ranks"]),
}
# files the tests read beside the package (model YAMLs, templates, the example backbone, demo data)
ALSO_COPY = ["properties", "examples", "dataset_atomic", "run_recbole_reveal.py", "run_experiments.py",
             "run_hyper.py", "benchmarks"]


def _git(*args, cwd=REPO, **kw):
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, **kw).stdout


def populate(workdir, ref):
    """Copy the repository into ``workdir``: the working tree (tracked and untracked, not ignored
    files), or the tree of commit ``ref``."""
    if ref:
        with tempfile.TemporaryFile() as blob:
            blob.write(_git("archive", "--format=tar", ref))
            blob.seek(0)
            with tarfile.open(fileobj=blob) as tar:
                tar.extractall(workdir, filter="data")
        return
    files = _git("ls-files", "-co", "--exclude-standard", "-z").decode().split("\0")
    for rel in filter(None, files):
        src = os.path.join(REPO, rel)
        if os.path.isfile(src):
            dst = os.path.join(workdir, rel)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.copy2(src, dst)


def selection_present(workdir, selection):
    """The test selection without the test files that do not exist in this tree (an older ``ref``)."""
    out, skip_next = [], False
    for n, arg in enumerate(selection):
        if skip_next:
            out.append(arg)
            skip_next = False
        elif arg.startswith("-"):
            out.append(arg)
            skip_next = arg in ("-k", "-m")
        elif os.path.exists(os.path.join(workdir, arg.split("::")[0])):
            out.append(arg)
    return out


def write_config(workdir, target, selection):
    """Append mutmut's section to the copy's setup.cfg (pytest's settings there stay in force)."""
    lines = ["", "[mutmut]", "source_paths = recbole_reveal", f"only_mutate = {target}",
             "pytest_add_cli_args_test_selection ="]
    lines += [f"    {arg}" for arg in selection]
    lines += ["also_copy ="] + [f"    {p}" for p in ALSO_COPY if os.path.exists(os.path.join(workdir, p))]
    # torch is not fork-safe once it has run: each mutant forks from a server that only collected
    lines += ["process_isolation = forkserver", "use_git_change_detection = false", ""]
    with open(os.path.join(workdir, "setup.cfg"), "a", encoding="utf-8") as f:
        f.write("\n".join(lines))


GENERATE = """
import sys
from mutmut.__main__ import copy_also_copy_files, copy_src_dir, create_mutants
copy_src_dir(); copy_also_copy_files(); create_mutants(1)
"""
SKIPPED, KILLED = 34, (1, 3)


def _meta_path(workdir, target):
    return os.path.join(workdir, "mutants", target + ".meta")


def _edit_meta(workdir, target, edit):
    with open(_meta_path(workdir, target), encoding="utf-8") as f:
        meta = json.load(f)
    edit(meta["exit_code_by_key"])
    with open(_meta_path(workdir, target), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=4)


def sample_mutants(workdir, target, size, seed, env):
    """Generate the mutants, then mark all but a seeded random ``size`` of them as skipped (mutmut
    leaves results it already has alone). The same seed and source give the same sample."""
    import random

    subprocess.run([sys.executable, "-c", GENERATE], cwd=workdir, env=env, check=True, capture_output=True)

    def keep_sample(codes):
        chosen = set(random.Random(seed).sample(sorted(codes), min(size, len(codes))))
        for name in codes:
            codes[name] = None if name in chosen else SKIPPED

    _edit_meta(workdir, target, keep_sample)


def carry_killed(workdir, target, source_dir):
    """Take over the mutants ``source_dir`` (an earlier run of the same file, same source) killed:
    valid when its tests are still selected and unchanged, i.e. tests were only added."""
    with open(os.path.join(source_dir, target), "rb") as a, open(os.path.join(workdir, target), "rb") as b:
        if a.read() != b.read():
            sys.exit(f"--carry {source_dir}: {target} differs from this tree's; run without --carry")
    with open(_meta_path(source_dir, target), encoding="utf-8") as f:
        old = json.load(f)["exit_code_by_key"]

    def take(codes):
        for name, code in codes.items():
            if code is None and old.get(name) in KILLED:
                codes[name] = old[name]

    _edit_meta(workdir, target, take)


def mutmut_binary():
    found = shutil.which("mutmut") or os.path.join(os.path.dirname(sys.executable), "mutmut")
    if not os.path.exists(found):
        sys.exit('mutmut is not installed: pip install -c constraints.txt -e ".[dev]"')
    return found


def results(workdir, target):
    """``{mutant name: status}`` from mutmut's record of the mutated file."""
    from mutmut.stats import status_by_exit_code

    with open(os.path.join(workdir, "mutants", target + ".meta"), encoding="utf-8") as f:
        meta = json.load(f)
    return {name: status_by_exit_code[code] for name, code in meta["exit_code_by_key"].items()}


def score(statuses):
    counts = {}
    for status in statuses.values():
        counts[status] = counts.get(status, 0) + 1
    total = len(statuses) - counts.get("skipped", 0)
    caught = counts.get("killed", 0) + counts.get("timeout", 0)
    return counts, total, (100.0 * caught / total if total else float("nan"))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("module", nargs="?", help=f"a key ({', '.join(MODULES)}) or a file under recbole_reveal/")
    p.add_argument("--tests", nargs="+", help="pytest arguments selecting the tests (default: the map's)")
    p.add_argument("--ref", help="mutate and test the tree of this commit instead of the working tree")
    p.add_argument("--max-children", type=int, default=1, help="parallel mutant workers (default 1)")
    p.add_argument("--workdir", help="scratch folder (default build/mutation/<key>[-<ref>])")
    p.add_argument("--fresh", action="store_true", help="delete the scratch folder first")
    p.add_argument("--sample", type=int, help="test a seeded random sample of this many mutants (the rest: skipped)")
    p.add_argument("--seed", type=int, default=0, help="seed of --sample (default 0)")
    p.add_argument("--carry", help="scratch folder of an earlier run of the same file whose killed mutants "
                                   "stand (only tests were added since)")
    p.add_argument("--list", action="store_true", help="print the module -> tests map and exit")
    a = p.parse_args(argv)
    if a.list or not a.module:
        for key, (target, tests) in MODULES.items():
            print(f"{key:14} {target:58} {' '.join(tests)}")
        return 0
    if a.module in MODULES:
        key, (target, selection) = a.module, MODULES[a.module]
    else:
        target = os.path.relpath(os.path.abspath(a.module), REPO)
        if not (target.startswith("recbole_reveal" + os.sep) and target.endswith(".py")):
            sys.exit(f"{a.module}: expected a key of the map or a .py file under recbole_reveal/")
        key = re.sub(r"\W", "_", target[len("recbole_reveal/"):-3])
        selection = None
    selection = a.tests or selection
    if not selection:
        sys.exit(f"{target} is not in the map: give its tests with --tests")
    workdir = os.path.abspath(a.workdir or os.path.join(REPO, "build", "mutation",
                                                         key + (f"-{a.ref}" if a.ref else "")))
    if a.fresh and os.path.isdir(workdir):
        shutil.rmtree(workdir)
    env = dict(os.environ)
    # subprocesses started by tests import the mutated copy, never the original package (the folder
    # must exist before Python starts, or the import system caches it as missing)
    env["PYTHONPATH"] = os.path.join(workdir, "mutants")
    if not os.path.isdir(os.path.join(workdir, "recbole_reveal")):
        os.makedirs(os.path.join(workdir, "mutants"), exist_ok=True)
        populate(workdir, a.ref)
        if not os.path.isfile(os.path.join(workdir, target)):
            sys.exit(f"{target} does not exist in {'commit ' + a.ref if a.ref else 'the working tree'}")
        selection = selection_present(workdir, selection)
        write_config(workdir, target, selection)
        if a.sample:
            sample_mutants(workdir, target, a.sample, a.seed, env)
        if a.carry:
            carry_killed(workdir, target, os.path.abspath(a.carry))
    print(f"mutating {target} in {workdir}\ntests: {' '.join(selection)}", flush=True)
    run = subprocess.run(["nice", "-n", "5", mutmut_binary(), "run", "--max-children", str(a.max_children)],
                         cwd=workdir, env=env)
    if run.returncode:
        return run.returncode

    statuses = results(workdir, target)
    counts, total, pct = score(statuses)
    survivors = sorted(n for n, s in statuses.items() if s in ("survived", "no tests", "suspicious"))
    lines = [f"# Mutation score of {target}" + (f" at {a.ref}" if a.ref else ""), "",
             f"tests: `{' '.join(selection)}`", "",
             f"score {pct:.1f}% ({counts.get('killed', 0) + counts.get('timeout', 0)} of {total} caught); "
             + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())), ""]
    for name in survivors:
        diff = subprocess.run([mutmut_binary(), "show", name], cwd=workdir, env=env, capture_output=True,
                              text=True).stdout
        lines += [f"## {name} ({statuses[name]})", "", "```diff", diff.strip(), "```", ""]
    report = "\n".join(lines)
    with open(os.path.join(workdir, "report.md"), "w", encoding="utf-8") as f:
        f.write(report)
    with open(os.path.join(workdir, "summary.json"), "w", encoding="utf-8") as f:
        json.dump({"module": target, "ref": a.ref, "tests": selection, "counts": counts, "total": total,
                   "score": pct, "survivors": {n: statuses[n] for n in survivors}}, f, indent=1)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
