"""``python run_recbole_reveal.py --model=M3SRec_REVEAL --dataset=synthetic-demo [--key=value ...]``: train
and evaluate a model (or run the FVE loop); the command is :mod:`recbole_reveal.commands.run_recbole_reveal`,
also installed as the console script ``run_recbole_reveal``."""

import sys

from recbole_reveal.commands.run_recbole_reveal import OPTIONS, format_result, main, parse_args  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
