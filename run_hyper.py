"""``python run_hyper.py --model=... --dataset=... --params_file=...``: RecBole's HyperTuning over plugin
and RecBole models; the command is :mod:`recbole_reveal.commands.run_hyper`, also installed as the
console script ``run_hyper``."""

import sys

from recbole_reveal.commands.run_hyper import OPTIONS, main, split_args  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
