"""Convert the public raw datasets of the paper (§5.1) into RecBole atomic files, images and
feature sets: Amazon 2014 Sports / Beauty / Home (and any other 2014 category) and Yelp.

::

    python -m recbole_reveal.commands.prepare_data Sports --raw-dir ~/raw/amazon --out dataset_atomic
    python -m recbole_reveal.commands.prepare_data Yelp --raw-dir ~/raw/yelp --out dataset_atomic

See docs/datasets.md for the inputs, every rule and counter, and the outputs.
"""

from recbole_reveal.prepare.pipeline import DATASETS, Options, PrepareError, prepare
from recbole_reveal.prepare.rawio import RawFileError

__all__ = ["DATASETS", "Options", "PrepareError", "RawFileError", "prepare"]
