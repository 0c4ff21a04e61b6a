"""What the commands print besides RecBole's own log: the FVE loop's stage lines (encoded items, cache
hits, the critic's accepted / kept / rejected counts per cycle, the per-cycle table), which otherwise
reach only the run's ``fve.log`` between two trainings. Light: no torch, no RecBole."""

import logging
import sys

FVE_LOGGER = "recbole_reveal.fve"


class _BetweenRecBoleRuns(logging.Filter):
    """Pass a record only while the root logger has no console handler: during a training RecBole's own
    console handler prints the FVE records (they propagate to it); between trainings (encode, feedback,
    critic) RecBole's handlers are closed, and this one prints them."""

    def filter(self, record):
        return not any(isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
                       for h in logging.getLogger().handlers)


def show_fve_progress(stream=None):
    """Print the FVE loop's INFO records (``fve.log`` gets them too) on the console (stderr, as RecBole's
    log). Idempotent."""
    logger = logging.getLogger(FVE_LOGGER)
    if any(getattr(h, "recbole_reveal_console", False) for h in logger.handlers):
        return
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s  %(message)s", "%d %b %H:%M"))
    handler.addFilter(_BetweenRecBoleRuns())
    handler.recbole_reveal_console = True
    logger.addHandler(handler)
