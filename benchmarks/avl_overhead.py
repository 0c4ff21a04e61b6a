"""AVL's training cost and its cheap mode's fidelity, side by side in one run.

    python benchmarks/avl_overhead.py [--backbone=M3SRec] [--dataset=synthetic-demo] [--data_path=...]
        [--repeats=3] [--probe_every=4] [--alpha 0.1 1.0] [--rules paper reference agm ogm_ge ckd] [--threads=N]

1. Cost: one training epoch of the backbone and of its REVEAL variant with exact AVL (the two probes as
   two forwards, and as one stacked forward) and with the cheap mode (``avl_probe_every``), each other
   ``avl_rule`` (exact, stacked), and AVL off with its per-epoch diagnostics on (the gradient norms; the
   unimodal validation is a validation cost), as the median of ``--repeats`` alternating runs and the ratio
   to the backbone; plus the probes alone. The AVL rows run without the diagnostics.
2. Fidelity of a cheap estimate of eq 13's K at the same probe cost (1/n of the exact probes): on a
   model trained for one epoch, for every batch of the next, the exact ``L_v - L_t`` and K, the estimate
   from a random 1/n of the batch (what the removed ``avl_sample_fraction`` did; 20 draws a batch), and
   the K that ``avl_probe_every: n`` holds (the exact K of the last probed batch). Printed: the real
   batch-to-batch std of ``L_v - L_t``, the std the subsample adds, the mean K of each way over the exact
   mean K (a bias above 0: exp() of a noisy gap), and each way's RMS error against the exact K.
"""

import argparse
import math
import statistics
import time

import numpy as np
import torch

from recbole_reveal.config import build_config
from recbole_reveal.training import prepare_run
from recbole_reveal.trainer import avl_scale


def epoch_time(trainer, train_data):
    start = time.perf_counter()
    trainer._train_epoch(train_data, epoch_idx=0)
    return time.perf_counter() - start


def probe_time(trainer, train_data):
    """Seconds of AVL's two no-grad probe passes over one epoch of batches, alone."""
    start = time.perf_counter()
    for interaction in train_data:
        trainer.unimodal_losses(interaction.to(trainer.device))
    return time.perf_counter() - start


def cost_table(backbone, dataset, repeats, probe_every, rules=(), data_path=None):
    reveal = f"{backbone}_REVEAL"
    quiet = {"avl_diagnostics": False}
    variants = {
        backbone: (backbone, {}),
        "REVEAL exact, 2 probe forwards": (reveal, dict(quiet, avl_stacked_probes=False)),
        "REVEAL exact, stacked probes": (reveal, dict(quiet, avl_stacked_probes=True)),
        f"REVEAL cheap (probe every {probe_every}), stacked": (reveal, dict(quiet, avl_stacked_probes=True,
                                                                             avl_probe_every=probe_every)),
        **{f"REVEAL avl_rule {rule}, stacked": (reveal, dict(quiet, avl_stacked_probes=True, avl_rule=rule))
           for rule in rules if rule != "paper"},
        "REVEAL avl off, diagnostics on": (reveal, {"avl": False}),
    }
    location = {"data_path": data_path} if data_path else {}
    built = {}
    for label, (model, overrides) in variants.items():
        config = build_config(model, dataset, config_dict=dict(overrides, **location, epochs=1, state="WARNING"))
        _, loaders, _, trainer = prepare_run(config)
        built[label] = (trainer, loaders[0])
        if model == reveal and config["avl"]:      # settles the stacked-probe check before anything is timed
            trainer.unimodal_losses(next(iter(loaders[0])))
    times = {label: [] for label in variants}
    for _ in range(repeats):           # alternate the variants so drifts in machine load hit all of them
        for label, (trainer, train_data) in built.items():
            times[label].append(epoch_time(trainer, train_data))
    probes = {}
    for label in ("REVEAL exact, 2 probe forwards", "REVEAL exact, stacked probes"):
        probes[label] = statistics.median(probe_time(*built[label]) for _ in range(repeats))

    base = statistics.median(times[backbone])
    print(f"\nAVL cost on {dataset} ({len(built[backbone][1])} batches/epoch, {torch.get_num_threads()} threads, "
          f"median of {repeats})")
    print(f"{'variant':<48}{'s/epoch':>10}{'ratio':>8}")
    for label in variants:
        t = statistics.median(times[label])
        print(f"{label:<48}{t:>10.2f}{t / base:>7.2f}x")
    for label, t in probes.items():
        name = "probes alone, " + ("stacked" if "stacked" in label else "2 forwards")
        print(f"{name:<48}{t:>10.2f}{t / base:>7.2f}x")
    print(f"stacked / 2-forward probe time: {probes['REVEAL exact, stacked probes'] / probes['REVEAL exact, 2 probe forwards']:.2f}")


def fidelity_table(backbone, dataset, probe_every, alphas, draws=20, seed=0):
    reveal = f"{backbone}_REVEAL"
    _, (train_data, _, _), _, trainer = prepare_run(build_config(
        reveal, dataset, config_dict={"epochs": 1, "state": "WARNING", "avl_stacked_probes": False}))
    trainer._train_epoch(train_data, epoch_idx=0)              # a model past its initialisation
    rng = torch.Generator().manual_seed(seed)
    exact, sub = [], []                                         # per batch: (L_v, L_t); draws x (L_v, L_t)
    with torch.no_grad():
        for interaction in train_data:
            interaction = interaction.to(trainer.device)
            exact.append(trainer.unimodal_losses(interaction))
            n = len(interaction)
            size = max(1, round(n / probe_every))
            pairs = []
            for _ in range(draws):
                index = torch.randperm(n, generator=rng)[:size].to(trainer.device)
                pairs.append(trainer.unimodal_losses(interaction[index]))
            sub.append(pairs)
    exact = np.asarray(exact)
    sub = np.asarray(sub)                                      # [batches, draws, 2]
    gap = exact[:, 0] - exact[:, 1]
    sub_gap = sub[:, :, 0] - sub[:, :, 1]
    mean_v, mean_t = exact[:, 0].mean(), exact[:, 1].mean()    # eq 11's means at this point of training
    batch_std = gap.std(ddof=1)
    noise_std = math.sqrt(np.mean(sub_gap.var(axis=1, ddof=1)))
    print(f"\nCheap AVL at 1/{probe_every} of the probe cost, {reveal} on {dataset} after one epoch "
          f"({len(gap)} batches, {draws} subsamples a batch)")
    print(f"  batch-to-batch std of L_v - L_t (the real variation): {batch_std:.4f}")
    print(f"  std a 1/{probe_every} subsample adds to L_v - L_t:        {noise_std:.4f} "
          f"({noise_std / batch_std:.1f}x the real variation)")
    print(f"{'alpha':>7}{'way':>34}{'mean K / exact mean K - 1':>28}{'RMS error of K':>17}")
    for alpha in alphas:
        k_exact = np.array([avl_scale(v, t, mean_v, mean_t, alpha) for v, t in exact])
        k_sub = np.array([[avl_scale(v, t, mean_v, mean_t, alpha) for v, t in pairs] for pairs in sub])
        k_held = k_exact[(np.arange(len(k_exact)) // probe_every) * probe_every]
        rows = (("exact (every batch)", k_exact, np.zeros_like(k_exact)),
                (f"subsample 1/{probe_every} (removed)", k_sub.mean(axis=1), k_sub - k_exact[:, None]),
                (f"avl_probe_every: {probe_every}", k_held, k_held - k_exact))
        for way, k, error in rows:
            print(f"{alpha:>7g}{way:>34}{k.mean() / k_exact.mean() - 1:>+28.4f}{math.sqrt(np.mean(error ** 2)):>17.4f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="M3SRec")
    parser.add_argument("--dataset", default="synthetic-demo")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--probe_every", type=int, default=4)
    parser.add_argument("--alpha", type=float, nargs="+", default=[0.1, 1.0])
    parser.add_argument("--rules", nargs="*", default=["paper", "reference", "agm", "ogm_ge", "ckd"],
                        help="avl_rule values timed besides the paper's")
    parser.add_argument("--data_path", default=None, help="folder holding <dataset>/ (default: the config's)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--skip", choices=("cost", "fidelity"), help="leave one part out")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.skip != "cost":
        cost_table(args.backbone, args.dataset, args.repeats, args.probe_every, args.rules, args.data_path)
    if args.skip != "fidelity":
        fidelity_table(args.backbone, args.dataset, args.probe_every, args.alpha)


if __name__ == "__main__":
    main()
