"""Dataset statistics in the layout of the paper's Table 1, next to the paper's numbers."""

import numpy as np

# Table 1 of arXiv 2606.09082 (§5.1), as printed. Density and avg.length are the paper's own
# rounding; Sports' 18,358 items is one more than the 18,357 items of reviews_Sports_and_Outdoors_5.
PAPER_TABLE1 = {
    "Home": {"users": 66519, "items": 28237, "interactions": 551682, "density": "0.03%", "avg_length": "8.3"},
    "Beauty": {"users": 22363, "items": 12101, "interactions": 198502, "density": "0.06%", "avg_length": "8.4"},
    "Sports": {"users": 35598, "items": 18358, "interactions": 296337, "density": "0.04%", "avg_length": "8.3"},
    "Yelp": {"users": 287116, "items": 148523, "interactions": 4392169, "density": "0.01%", "avg_length": "15.1"},
}


def compute_stats(users, items):
    """``users``, ``items``: index arrays of the final interactions."""
    n_users = int(np.unique(users).size)
    n_items = int(np.unique(items).size)
    n = int(len(users))
    density = n / (n_users * n_items) if n_users and n_items else 0.0
    return {"users": n_users, "items": n_items, "interactions": n,
            "density": round(density, 8), "avg_length": round(n / n_users, 4) if n_users else 0.0}


def table1_rows(name, stats, paper_key=None):
    """Rows ``(dataset, source, users, items, interactions, density, avg.length)`` as strings; the
    paper's row first when ``paper_key`` names a Table 1 dataset."""
    rows = []
    paper = PAPER_TABLE1.get(paper_key) if paper_key else None
    if paper:
        rows.append((name, "paper Table 1", f"{paper['users']:,}", f"{paper['items']:,}",
                     f"{paper['interactions']:,}", paper["density"], paper["avg_length"]))
    rows.append((name, "this conversion", f"{stats['users']:,}", f"{stats['items']:,}",
                 f"{stats['interactions']:,}", f"{100 * stats['density']:.3f}%", f"{stats['avg_length']:.2f}"))
    return rows


def format_table(rows, markdown=False):
    header = ("Dataset", "Source", "#users", "#items", "#interactions", "density", "avg.length")
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(str(r[k])) for r in [header, *rows]) for k in range(len(header))]
    fmt = lambda r: "  ".join(str(v).ljust(w) if k < 2 else str(v).rjust(w)  # noqa: E731
                              for k, (v, w) in enumerate(zip(r, widths)))
    return "\n".join([fmt(header)] + [fmt(r) for r in rows])
