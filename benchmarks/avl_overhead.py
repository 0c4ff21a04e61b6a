"""AVL's training cost: one epoch of M3SRec and M3SRec_REVEAL side by side, on the same data.

    python benchmarks/avl_overhead.py [--dataset=synthetic-demo] [--repeats=3] [--fractions 1.0 0.25]

Prints, per variant, the median epoch time over ``--repeats`` alternating runs and its ratio to the
plain backbone, plus the time of AVL's two no-grad probe passes alone (the target: the exact AVL epoch
costs no more than the backbone epoch plus those probes, i.e. a ratio <= 1.6x on CPU).
"""

import argparse
import statistics
import time

import torch

from recbole_reveal.quick_start import prepare_run


def epoch_time(trainer, train_data):
    start = time.perf_counter()
    trainer._train_epoch(train_data, epoch_idx=0)
    return time.perf_counter() - start


def probe_time(trainer, train_data):
    """Time of the two unimodal no-grad loss passes AVL adds, over one epoch of batches."""
    trainer.model.train()
    start = time.perf_counter()
    for interaction in train_data:
        trainer.unimodal_losses(interaction.to(trainer.device))
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="synthetic-demo")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fractions", type=float, nargs="+", default=[1.0, 0.25])
    parser.add_argument("--probe_modes", nargs="+", default=["train", "eval"], choices=["train", "eval"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    variants = {"M3SRec": ("M3SRec", {})}
    for mode in args.probe_modes:
        for fraction in args.fractions:
            variants[f"M3SRec_REVEAL (probes {mode}, fraction {fraction:g})"] = (
                "M3SRec_REVEAL", {"avl_sample_fraction": fraction, "avl_probe_mode": mode}
            )
    built = {}
    for label, (model, overrides) in variants.items():
        config, loaders, _, trainer = prepare_run(model, args.dataset, config_dict=dict(overrides, epochs=1))
        built[label] = (trainer, loaders[0])

    times = {label: [] for label in variants}
    for _ in range(args.repeats):  # alternate variants so drifts in machine load hit all of them
        for label, (trainer, train_data) in built.items():
            times[label].append(epoch_time(trainer, train_data))
    exact = next(label for label in variants if "fraction 1)" in label)
    probes = statistics.median(probe_time(*built[exact]) for _ in range(args.repeats))

    base = statistics.median(times["M3SRec"])
    print(f"\nAVL overhead on {args.dataset} ({len(built['M3SRec'][1])} batches/epoch, "
          f"{torch.get_num_threads()} threads, median of {args.repeats})")
    print(f"{'variant':<50}{'s/epoch':>10}{'ratio':>8}")
    for label in variants:
        t = statistics.median(times[label])
        print(f"{label:<50}{t:>10.2f}{t / base:>7.2f}x")
    print(f"{'two no-grad probe passes alone (' + exact[15:-1] + ')':<50}{probes:>10.2f}{probes / base:>7.2f}x")
    extra = statistics.median(times[exact]) - base
    print(f"exact AVL extra time / probe time: {extra / probes:.2f} (<= 1 means AVL costs no more than its probes)")


if __name__ == "__main__":
    main()
