"""``python -m recbole_reveal.commands.fve_prompts --dataset NAME``: write FVE's initial prompt per item (JSON
lines). The options are the loop's config keys (properties/fve/fve.yaml)."""

import argparse
import logging
import os
import sys

from recbole_reveal.infra.errors import exit_status
from recbole_reveal.fve.prompts.records import write_prompts
from recbole_reveal.fve.prompts.templates import DEFAULT_TEMPLATES, build_initial_prompts

logger = logging.getLogger(__name__)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m recbole_reveal.commands.fve_prompts",
                                description="Write FVE's initial prompt per item (JSON lines).")
    p.add_argument("--dataset", required=True)
    p.add_argument("--data_path", default="dataset_atomic")
    p.add_argument("--out", help="output file (default <data_path>/<dataset>/fve/prompts_initial.jsonl)")
    p.add_argument("--fve_templates", dest="templates",
                   help=f"templates file (default {os.path.relpath(DEFAULT_TEMPLATES)})")
    p.add_argument("--fve_keywords_topk", dest="top_k", type=int, default=5)
    p.add_argument("--fve_keyword_reviews", dest="reviews", choices=["exclude_eval", "all"],
                   default="exclude_eval", help="exclude_eval: leave out each user's evaluation-time reviews "
                   "where the reviews name their user (default); all: every review")
    p.add_argument("--fve_stopwords", dest="stopwords",
                   help="stop-word file, one per line (default: the built-in English list)")
    p.add_argument("--fve_keyword_cache_dir", dest="keyword_cache",
                   help="folder of the content-keyed keyword cache (default: none)")
    a = p.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    records = build_initial_prompts(a.dataset, a.data_path, a.templates, a.top_k, a.reviews, a.stopwords,
                                    keyword_cache=a.keyword_cache)
    out = a.out or os.path.join(a.data_path, a.dataset, "fve", "prompts_initial.jsonl")
    write_prompts(out, records)
    logger.info("wrote %d prompts to %s", len(records), out)
    return out


def cli(argv=None):
    """:func:`main`, with a user error as one ``error:`` line and exit status 2."""
    return exit_status(main, argv)


if __name__ == "__main__":
    sys.exit(cli())
