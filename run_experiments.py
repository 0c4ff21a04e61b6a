"""The paper's experiments, one command per kind of table or figure (docs/experiments.md).

    python run_experiments.py seeds    --dataset=Sports --models M3SRec M3SRec_REVEAL      # Table 2
    python run_experiments.py variants --dataset=Home --backbone M3SRec [--vlm_path=DIR]  # Table 3
    python run_experiments.py modality --dataset=Beauty --backbone HM4SR [--vlm_path=DIR] # Fig. 1d-e, Table 4
    python run_experiments.py plot     --results results/Home                             # Figs. 4-5

``python run_experiments.py <command> --help`` lists each command's options. Hyper-parameter searches
(alpha, X_max) run through ``run_hyper.py``.
"""

import sys

from recbole_reveal.commands.run_experiments import main

if __name__ == "__main__":
    sys.exit(main())
