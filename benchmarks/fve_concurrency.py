r"""Two FVE loops started together on one feature folder, with different learning rates: what each trial
ends with. Prints one line per trial and a summary.

    python benchmarks/fve_concurrency.py [--trials 3] [--delay 2] [--work /tmp/fve_concurrency]

Each trial copies a tiny dataset's feature folder, starts run A (learning_rate 0.001), then run B
(0.005) ``--delay`` seconds later, both with the default run folder ``<feature_dir>/fve/run`` (with
``--delay 0`` either may get there first). A trial is
*consistent* when the run folder's ``stages.json`` records one run's config, its ``cycle_1/model.pth``
holds the weights that config gives alone (to 1e-5; the learning rates' weights differ by ~1e-2) (a reference run per learning rate in a folder of its
own; FVE runs are deterministic on CPU) and the SHA-256 recorded for it is the file's. ``PYTHONPATH``
chooses the code under test.
"""

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

NAME, N_ITEMS = "fveconc", 24
LRS = {"A": 0.001, "B": 0.005}


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def weights_of(path, references, tol=1e-5):
    """The learning rate whose reference run has these weights, up to float noise: CPU runs agree to
    ~1e-7 (MKL picks its thread count by load), the two learning rates differ by ~1e-2."""
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    for lr, ref in references.items():
        if state.keys() == ref.keys() and all(torch.allclose(state[k].float(), ref[k].float(), rtol=0, atol=tol)
                                              for k in state):
            return lr
    return "neither run alone"


def prepare(work):
    from recbole_reveal.data.feature_store import save_item_features
    from recbole_reveal.data.synthetic import generate_dataset
    from recbole_reveal.testing.vlms import build_tiny_qwen2_5_vl

    data = os.path.join(work, "data")
    if not os.path.isdir(os.path.join(data, NAME)):
        generate_dataset(data, NAME, n_users=40, n_items=N_ITEMS, seed=3, image_size=32)
    features = os.path.join(work, "features")
    if not os.path.isdir(features):
        with open(os.path.join(data, NAME, f"{NAME}.item"), encoding="utf-8") as f:
            tokens = [line.split("\t")[0] for line in f.read().splitlines()[1:] if line]
        save_item_features(features, "text_minilm", tokens,
                           np.random.default_rng(0).normal(size=(len(tokens), 8)).astype(np.float32))
    vlm = os.path.join(work, "vlm")
    if not os.path.isdir(vlm):
        build_tiny_qwen2_5_vl(vlm)
    return data, features, vlm


def start(script, data, features, vlm, lr):
    return subprocess.Popen(
        [sys.executable, script, "--model=M3SRec_REVEAL", f"--dataset={NAME}", f"--data_path={data}",
         f"--feature_dir={features}", f"--vlm_path={vlm}", "--fve_device=cpu", "--fve_cycles=2",
         "--fve_preprocess_workers=0", "--fve_rewrite_max_new_tokens=4", "--epochs=1", "--hidden_size=16",
         "--inner_size=32", "--n_heads=2", "--MAX_ITEM_LIST_LENGTH=10", f"--learning_rate={lr}",
         "--show_progress=False", "--state=WARNING"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def last_error(stderr):
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:") or "Error" in line]
    return (errors or lines or ["-"])[-1][:160]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--delay", type=float, default=2.0)
    p.add_argument("--work", default="/tmp/fve_concurrency")
    a = p.parse_args()
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "run_recbole_reveal.py")
    os.makedirs(a.work, exist_ok=True)
    data, features, vlm = prepare(a.work)
    reference = {}
    for name, lr in LRS.items():
        folder = os.path.join(a.work, f"reference_{name}")
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(features, folder)
        out, err = (proc := start(script, data, folder, vlm, lr)).communicate()
        if proc.returncode != 0:
            sys.exit(f"reference run {name} failed: {last_error(err)}")
        import torch

        reference[lr] = torch.load(os.path.join(folder, "fve", "run", "cycle_1", "model.pth"), map_location="cpu",
                                   weights_only=True)
    outcomes = []
    for trial in range(a.trials):
        folder = os.path.join(a.work, f"trial_{trial}")
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(features, folder)
        run_a = start(script, data, folder, vlm, LRS["A"])
        time.sleep(a.delay)
        run_b = start(script, data, folder, vlm, LRS["B"])
        err_b = run_b.communicate()[1]
        err_a = run_a.communicate()[1]
        run_dir = os.path.join(folder, "fve", "run")
        try:
            state = json.load(open(os.path.join(run_dir, "stages.json")))
            recorded = state["config"]["learning_rate"]
            model = os.path.join(run_dir, "cycle_1", "model.pth")
            weights = weights_of(model, reference)
            digest_ok = state["stages"]["cycle_1/train"]["artefact_sha256"] == [sha(model)]
            consistent = weights == recorded and digest_ok
            detail = f"stages.json lr={recorded}, model.pth = weights of lr={weights}, digest ok={digest_ok}"
        except (OSError, KeyError, ValueError) as e:
            consistent, detail = False, f"run folder unreadable: {type(e).__name__}: {e}"
        outcomes.append((run_a.returncode, run_b.returncode, consistent))
        both = run_a.returncode == 0 and run_b.returncode == 0
        verdict = "INTERLEAVED (both ran on one folder)" if both else ("consistent" if consistent else "CORRUPT")
        print(f"trial {trial}: A rc={run_a.returncode} B rc={run_b.returncode}; {detail}; {verdict}"
              f"\n  A: {last_error(err_a)}\n  B: {last_error(err_b)}")
    clean = sum(1 for ra, rb, ok in outcomes if ok and {ra, rb} == {0, 2})
    print(f"\n{len(outcomes)} trials: {clean} with one run finished, the other refused (rc 2) and a consistent "
          "run folder; "
          f"{sum(1 for ra, rb, _ in outcomes if ra == rb == 0)} with both running on one folder; "
          f"{sum(1 for ra, rb, _ in outcomes if ra not in (0, 2) or rb not in (0, 2))} with a crash; "
          f"{sum(1 for *_, ok in outcomes if not ok)} with an inconsistent run folder")


if __name__ == "__main__":
    main()
