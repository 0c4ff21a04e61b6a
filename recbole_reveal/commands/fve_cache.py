"""``python -m recbole_reveal.commands.fve_cache info ROOT``: entries, shard files and size of an FVE
embedding cache folder, without changing anything."""

import argparse
import logging
import os

from recbole_reveal.fve.encoding.cache.embeddings import cache_summary


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m recbole_reveal.commands.fve_cache",
                                description="Inspect an FVE embedding cache folder (info).")
    p.add_argument("action", choices=["info"])
    p.add_argument("root")
    a = p.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if not os.path.isdir(a.root):
        raise SystemExit(f"not a folder: {a.root}")
    summary = cache_summary(a.root)
    print(f"{a.root}: {summary['entries']} entries in {summary['shard_files']} shard files "
          f"({summary['bytes'] / 2**20:.1f} MiB, {summary['unreadable_shards']} unreadable)")
    return summary


if __name__ == "__main__":
    main()
