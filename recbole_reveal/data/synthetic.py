"""Deterministic generator of a SYNTHETIC multimodal sequential-recommendation dataset.

The data is invented; it exists so that the whole pipeline (feature extraction, RecBole loading,
training, AVL/FVE) can run and be tested without downloading a real dataset. It is designed so
that each modality carries signal and vision carries signal that text lacks:

* category -- a 10-way product type: in the title, the ``categories`` column *and* the image
  silhouette; the next category follows a sparse global Markov chain (ID/sequence signal);
* brand    -- in the title and ``brand`` column only (text-only signal; users mildly prefer one);
* colour and pattern -- only in the image (fill colour / fill pattern); every user has a preferred
  colour and pattern that strongly drives which item of a category they pick (vision-only signal).
  Reviews mention looks only sometimes, and sometimes wrongly;
* popularity -- a Zipf-like per-item weight (ID signal).

Two knobs set the modality imbalance (``benchmarks/imbalance_sweep.py``): ``vision_share``, the share
of the users' taste (the choice logit's preference weights) that only the images carry (colour and
pattern) rather than the text (brand); ``text_noise``, the probability that an item's title and brand
column name a wrong brand (less informative text). Left unset they give the demo dataset unchanged.

Usage::

    python -m recbole_reveal.commands.synthetic_data --out dataset_atomic --name synthetic-demo
    python -m recbole_reveal.commands.synthetic_data --name imbalance --vision_share 0.95 --text_noise 0.3

Same arguments give byte-identical files (PNG included).
"""

import math
import os

import numpy as np
from PIL import Image, ImageDraw

from recbole_reveal.data.synthetic_readme import dataset_readme
from recbole_reveal.infra.files import atomic_open, atomic_path

# (top-level category token, sub-category token, title noun, silhouette)
CATEGORIES = [
    ("Sports_Outdoors", "Tents", "tent", "triangle"),
    ("Home_Kitchen", "Lamps", "lamp", "circle"),
    ("Clothing_Shoes", "Sneakers", "sneaker", "ellipse"),
    ("Home_Kitchen", "Mugs", "mug", "square"),
    ("Electronics", "Watches", "watch", "hexagon"),
    ("Toys_Games", "Kites", "kite", "diamond"),
    ("Sports_Outdoors", "Backpacks", "backpack", "pentagon"),
    ("Beauty", "Perfumes", "perfume", "star"),
    ("Health_Household", "First_Aid", "kit", "cross"),
    ("Patio_Garden", "Hammocks", "hammock", "crescent"),
]
BRANDS = [
    "Acme", "Northwind", "Zephyr", "Kestrel", "Orbit", "Summit",
    "Tandem", "Vertex", "Lumen", "Halcyon", "Quill", "Ridgeway",
]
COLORS = {
    "red": (214, 40, 40), "orange": (247, 127, 0), "yellow": (240, 200, 20),
    "green": (46, 160, 67), "blue": (30, 90, 220), "purple": (128, 50, 180),
    "pink": (240, 110, 170), "brown": (120, 72, 30),
}
PATTERNS = ["solid", "stripes", "dots", "checks"]
# Words a review may use for an attribute; titles must never contain any of them.
COLOR_WORDS = {c: [c] for c in COLORS}
PATTERN_WORDS = {
    "solid": ["solid", "plain"], "stripes": ["striped", "stripes"],
    "dots": ["dotted", "polka-dot"], "checks": ["checked", "checkered"],
}
LOOK_WORDS = sorted({w for ws in list(COLOR_WORDS.values()) + list(PATTERN_WORDS.values()) for w in ws})

# Choice model inside a category: logit = A*colour match + B*pattern match + C*log pop + D*brand.
PREF_COLOR, PREF_PATTERN, PREF_POP, PREF_BRAND = 2.0, 1.0, 0.8, 0.7
ZIPF_EXPONENT = 0.7
CHAIN_STAY_ON_SUCCESSORS = 0.9  # the rest of the mass jumps to a uniform random category
REVIEW_TRUE_LOOK, REVIEW_WRONG_LOOK = 0.3, 0.1
BASE_TIME = 1_600_000_000  # 2020-09-13; timestamps are seconds
# what the dataset's README states about the generator
README_FACTS = {"brands": BRANDS, "chain_stay_on_successors": CHAIN_STAY_ON_SUCCESSORS, "pref_pop": PREF_POP,
                "review_true_look": REVIEW_TRUE_LOOK, "review_wrong_look": REVIEW_WRONG_LOOK,
                "zipf_exponent": ZIPF_EXPONENT}

_OPENERS = [
    "Arrived on time.", "Bought this as a gift.", "Second one I have ordered.",
    "Ordered this last month.", "Packaging was fine.", "Took a while to arrive.",
    "Exactly what I was looking for.", "My partner picked this one.",
]
_BODIES = [
    "The {noun} works as described.", "Good value for a {noun}.",
    "The {noun} feels sturdy enough.", "Setup of the {noun} was easy.",
    "This {noun} is smaller than expected.", "Quality of the {noun} is okay for the price.",
    "The {noun} does the job.", "I use the {noun} every week.",
]
_CLOSERS = [
    "Would buy again.", "Four stars overall.", "Recommended.", "No complaints so far.",
    "Might return it.", "Happy with it.", "Customer service was helpful.", "",
]
_LOOK_SENTENCES = [
    "I love the {look} look.", "The {look} design stands out.",
    "Nice {look} finish.", "Went for it because of the {look} style.",
]


def _rng(seed, *stream):
    """Independent stream per purpose, so changing one part never shifts another's draws."""
    return np.random.default_rng([int(seed), *[int(s) for s in stream]])


# --------------------------------------------------------------------------- catalogue

def taste_weights(vision_share=None):
    """``(colour, pattern, brand)`` weights of the choice logit: the demo's constants, or their total
    split ``vision_share`` to the image-only attributes (colour 2 : pattern 1) and the rest to brand."""
    if vision_share is None:
        return PREF_COLOR, PREF_PATTERN, PREF_BRAND
    if not 0 <= vision_share <= 1:
        raise ValueError(f"vision_share must be in [0, 1], got {vision_share}")
    total = PREF_COLOR + PREF_PATTERN + PREF_BRAND
    return total * vision_share * 2 / 3, total * vision_share / 3, total * (1 - vision_share)


def make_items(n_items, seed, text_noise=0.0):
    """Item attribute table (a list of dicts, in item order). With ``text_noise`` p, an item's shown
    brand (``shown_brand``: title and brand column) is another brand with probability p."""
    if not 0 <= text_noise <= 1:
        raise ValueError(f"text_noise must be in [0, 1], got {text_noise}")
    rng = _rng(seed, 1)
    n_cat = min(len(CATEGORIES), n_items)
    cats = np.arange(n_items) % n_cat  # balanced categories
    rng.shuffle(cats)
    pop_rank = rng.permutation(n_items) + 1
    items = []
    for i in range(n_items):
        letters = "".join(rng.choice(list("BDFHJKLMNPRTVWXZ"), size=2))
        items.append({
            "token": f"i{i:04d}",
            "category": int(cats[i]),
            "brand": int(rng.integers(len(BRANDS))),
            "color": str(rng.choice(list(COLORS))),
            "pattern": str(rng.choice(PATTERNS)),
            "popularity": float(pop_rank[i] ** -ZIPF_EXPONENT),
            "model_code": f"{letters}-{int(rng.integers(100, 1000))}",
        })
    noise = _rng(seed, 6)      # its own stream: the demo's draws stay as they were
    for item in items:
        wrong = noise.random() < text_noise
        other = int(noise.integers(len(BRANDS) - 1))
        item["shown_brand"] = (item["brand"] + 1 + other) % len(BRANDS) if wrong else item["brand"]
    return items


def item_title(item):
    return f"{BRANDS[item['shown_brand']]} {CATEGORIES[item['category']][2]} {item['model_code']}"


def make_category_chain(n_cat, rng):
    """Row-stochastic transition matrix; each category has 2-3 likely successors."""
    trans = np.full((n_cat, n_cat), (1 - CHAIN_STAY_ON_SUCCESSORS) / n_cat)
    for c in range(n_cat):
        k = min(int(rng.integers(2, 4)), n_cat)
        succ = rng.choice(n_cat, size=k, replace=False)
        trans[c, succ] += CHAIN_STAY_ON_SUCCESSORS * rng.dirichlet(np.full(k, 2.0))
    return trans / trans.sum(1, keepdims=True)


# --------------------------------------------------------------------------- users

def make_sequences(items, n_users, seed, weights=None):
    """Returns (users, sequences): per-user preferences and item-index sequences; ``weights`` =
    :func:`taste_weights`."""
    w_color, w_pattern, w_brand = weights or taste_weights()
    rng = _rng(seed, 2)
    n_cat = len({it["category"] for it in items})
    trans = make_category_chain(n_cat, rng)
    by_cat = [np.array([i for i, it in enumerate(items) if it["category"] == c]) for c in range(n_cat)]
    colors = np.array([it["color"] for it in items])
    patterns = np.array([it["pattern"] for it in items])
    brands = np.array([it["brand"] for it in items])
    log_pop = np.log([it["popularity"] for it in items])

    users, sequences = [], []
    for _ in range(n_users):
        pref = {
            "color": str(rng.choice(list(COLORS))),
            "pattern": str(rng.choice(PATTERNS)),
            "brand": int(rng.integers(len(BRANDS))),
        }
        logits = (w_color * (colors == pref["color"]) + w_pattern * (patterns == pref["pattern"])
                  + w_brand * (brands == pref["brand"]) + PREF_POP * log_pop)
        length = min(20, 8 + int(rng.poisson(4)))
        seq, seen = [], set()
        cat = int(rng.integers(n_cat))
        for _ in range(length):
            cand = np.array([i for i in by_cat[cat] if i not in seen])
            if cand.size == 0:  # category exhausted (tiny catalogues): allow a repeat
                cand = by_cat[cat]
            p = np.exp(logits[cand] - logits[cand].max())
            choice = int(rng.choice(cand, p=p / p.sum()))
            seq.append(choice)
            seen.add(choice)
            cat = int(rng.choice(n_cat, p=trans[cat]))
        users.append(pref)
        sequences.append(seq)
    _cover_all_items(items, sequences, rng)
    return users, sequences


def _cover_all_items(items, sequences, rng):
    """Give every never-chosen item one interaction, so .item and .inter share one item set.

    The item replaces a same-category pick of some user (keeping the category chain intact)
    whose replaced item stays covered elsewhere.
    """
    counts = np.bincount([i for s in sequences for i in s], minlength=len(items))
    for item in np.flatnonzero(counts == 0):
        cat = items[item]["category"]
        slots = [(u, t) for u, s in enumerate(sequences) for t, i in enumerate(s)
                 if items[i]["category"] == cat and counts[i] > 1 and item not in s]
        if not slots:
            raise ValueError("too few users to cover every item; raise n_users or lower n_items")
        u, t = slots[int(rng.integers(len(slots)))]
        counts[sequences[u][t]] -= 1
        sequences[u][t] = int(item)
        counts[item] += 1


# --------------------------------------------------------------------------- images

def _shape_polygon(shape, cx, cy, r, angle):
    """Silhouette outline as a polygon (so every shape can be rotated the same way)."""
    def ring(n, radius, phase=0.0, sx=1.0, sy=1.0):
        return [(sx * radius * math.cos(phase + 2 * math.pi * k / n),
                 sy * radius * math.sin(phase + 2 * math.pi * k / n)) for k in range(n)]

    if shape == "circle":
        pts = ring(64, r)
    elif shape == "ellipse":
        pts = ring(64, r, sx=1.0, sy=0.55)
    elif shape == "triangle":
        pts = ring(3, r, -math.pi / 2)
    elif shape == "square":
        pts = ring(4, r * 1.1, math.pi / 4)
    elif shape == "diamond":
        pts = ring(4, r, 0.0, sx=0.7)
    elif shape == "pentagon":
        pts = ring(5, r, -math.pi / 2)
    elif shape == "hexagon":
        pts = ring(6, r)
    elif shape == "star":
        outer, inner = ring(5, r, -math.pi / 2), ring(5, r * 0.45, -math.pi / 2 + math.pi / 5)
        pts = [p for pair in zip(outer, inner) for p in pair]
    elif shape == "cross":
        a, b = r, r * 0.35
        pts = [(-b, -a), (b, -a), (b, -b), (a, -b), (a, b), (b, b),
               (b, a), (-b, a), (-b, b), (-a, b), (-a, -b), (-b, -b)]
    elif shape == "crescent":
        # outer arc of radius r, inner arc of a circle shifted right (a bite out of the disc)
        outer = [(r * math.cos(t), r * math.sin(t)) for t in np.linspace(0.35 * math.pi, 1.65 * math.pi, 40)]
        inner = [(0.45 * r + 0.8 * r * math.cos(t), 0.8 * r * math.sin(t))
                 for t in np.linspace(1.45 * math.pi, 0.55 * math.pi, 40)]
        pts = outer + inner
    else:
        raise ValueError(f"unknown shape {shape}")
    ca, sa = math.cos(angle), math.sin(angle)
    return [(cx + x * ca - y * sa, cy + x * sa + y * ca) for x, y in pts]


def _pattern_layer(size, color, pattern, rng):
    """Full-canvas fill: the item colour, with the pattern in a darker shade of that colour."""
    layer = Image.new("RGB", (size, size), color)
    if pattern == "solid":
        return layer
    draw = ImageDraw.Draw(layer)
    dark = tuple(int(c * 0.45) for c in color)
    period = max(6, size // 11)
    off = int(rng.integers(period))
    if pattern == "stripes":
        w = max(2, period * 2 // 5)
        for x in range(-size, 2 * size, period):  # diagonal stripes
            draw.polygon([(x + off, 0), (x + off + w, 0), (x + off + w - size, size), (x + off - size, size)],
                         fill=dark)
    elif pattern == "dots":
        rad = max(1, period // 4)
        for y in range(off % period - period, size + period, period):
            for x in range(off % period - period, size + period, period):
                draw.ellipse([x - rad, y - rad, x + rad, y + rad], fill=dark)
    elif pattern == "checks":
        for y in range(-period, size + period, period):
            for x in range(-period, size + period, period):
                if ((x + y) // period) % 2 == 0:
                    draw.rectangle([x + off, y + off, x + off + period - 1, y + off + period - 1], fill=dark)
    return layer


def render_item_image(item, seed, size=128):
    """Category silhouette filled with the item's colour and pattern, on signal-free clutter."""
    rng = _rng(seed, 3, int(item["token"][1:]))
    ss = 2 * size  # draw at 2x, then downsample: anti-aliased edges
    # Background: light random tint with coarse (block) noise -- carries no signal, compresses well.
    tint = rng.integers(205, 250, size=3)
    coarse = np.clip(tint + rng.normal(0, 6, size=(8, 8, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(coarse, "RGB").resize((ss, ss), Image.BILINEAR)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(1, 4))):  # small grey blobs behind the object
        g = int(rng.integers(110, 190))
        x, y, r = rng.uniform(0, ss), rng.uniform(0, ss), rng.uniform(ss * 0.02, ss * 0.05)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=(g, g, g))

    shape = CATEGORIES[item["category"]][3]
    r = ss * rng.uniform(0.28, 0.40)  # shape variant: size, rotation, small offset
    cx, cy = ss / 2 + rng.uniform(-0.06, 0.06) * ss, ss / 2 + rng.uniform(-0.06, 0.06) * ss
    angle = rng.uniform(-0.35, 0.35)
    mask = Image.new("L", (ss, ss), 0)
    ImageDraw.Draw(mask).polygon(_shape_polygon(shape, cx, cy, r, angle), fill=255)
    fill = _pattern_layer(ss, COLORS[item["color"]], item["pattern"], rng)
    img.paste(fill, (0, 0), mask)

    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 5))):  # thin random lines over everything
        g = int(rng.integers(60, 170))
        pts = [tuple(rng.uniform(0, ss, size=2)) for _ in range(2)]
        draw.line(pts, fill=(g, g, g), width=2)
    return img.resize((size, size), Image.LANCZOS)


# --------------------------------------------------------------------------- reviews

def make_review(item, rng):
    noun = CATEGORIES[item["category"]][2]
    parts = [str(rng.choice(_OPENERS)), str(rng.choice(_BODIES)).format(noun=noun)]
    u = rng.random()
    if u < REVIEW_TRUE_LOOK + REVIEW_WRONG_LOOK:
        use_color = rng.random() < 0.5
        truth = item["color"] if use_color else item["pattern"]
        pool = list(COLORS) if use_color else PATTERNS
        if u >= REVIEW_TRUE_LOOK:  # noise: a wrong colour / pattern
            truth = str(rng.choice([v for v in pool if v != truth]))
        words = COLOR_WORDS[truth] if use_color else PATTERN_WORDS[truth]
        look = str(rng.choice(words))
        parts.append(str(rng.choice(_LOOK_SENTENCES)).format(look=look))
    closer = str(rng.choice(_CLOSERS))
    if closer:
        parts.append(closer)
    return " ".join(parts)


# --------------------------------------------------------------------------- writing

def _write_tsv(path, header, rows):
    with atomic_open(path, "w", newline="\n") as f:
        f.write("\t".join(header) + "\n")
        for row in rows:
            f.write("\t".join(str(v) for v in row) + "\n")


def generate_dataset(out_dir, name, n_users=1500, n_items=480, seed=2026, image_size=128, vision_share=None,
                     text_noise=0.0):
    """Write the dataset to ``<out_dir>/<name>/``; returns a summary dict of counts (knobs: module
    docstring)."""
    if n_items < 2 or n_users < 1:
        raise ValueError("need at least 2 items and 1 user")
    root = os.path.join(out_dir, name)
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    os.makedirs(os.path.join(root, "truth"), exist_ok=True)

    items = make_items(n_items, seed, text_noise)
    weights = taste_weights(vision_share)
    users, sequences = make_sequences(items, n_users, seed, weights)

    _write_tsv(
        os.path.join(root, f"{name}.item"),
        ["item_id:token", "title:token_seq", "categories:token_seq", "brand:token", "image:token"],
        [(it["token"], item_title(it), " ".join(CATEGORIES[it["category"]][:2]),
          BRANDS[it["shown_brand"]], f"images/{it['token']}.png") for it in items],
    )
    for it in items:
        with atomic_path(os.path.join(root, "images", f"{it['token']}.png"), fsync=False) as tmp:
            render_item_image(it, seed, image_size).save(tmp, format="PNG", compress_level=9)

    time_rng, review_rng = _rng(seed, 4), _rng(seed, 5)
    inter_rows, review_rows = [], []
    for u, (pref, seq) in enumerate(zip(users, sequences)):
        t = BASE_TIME + int(time_rng.integers(0, 180 * 86400))
        for i in seq:
            t += 60 + int(time_rng.exponential(2 * 86400))  # >= 1 minute apart: strictly increasing
            it = items[i]
            match = (it["color"] == pref["color"]) + (it["pattern"] == pref["pattern"])
            rating = int(np.clip(round(3 + match + time_rng.normal(0, 0.8)), 1, 5))
            inter_rows.append((f"u{u:04d}", it["token"], f"{rating:.1f}", t))
            review_rows.append((f"u{u:04d}", it["token"], t, make_review(it, review_rng)))
    _write_tsv(os.path.join(root, f"{name}.inter"),
               ["user_id:token", "item_id:token", "rating:float", "timestamp:float"], inter_rows)
    _write_tsv(os.path.join(root, f"{name}.review"),
               ["user_id:token", "item_id:token", "timestamp:float", "review:token"], review_rows)
    _write_tsv(os.path.join(root, "truth", "item_attributes.tsv"),
               ["item_id", "category", "brand", "color", "pattern", "popularity"],
               [(it["token"], CATEGORIES[it["category"]][1], BRANDS[it["brand"]], it["color"],
                 it["pattern"], f"{it['popularity']:.6f}") for it in items])
    _write_tsv(os.path.join(root, "truth", "user_preferences.tsv"),
               ["user_id", "color", "pattern", "brand"],
               [(f"u{u:04d}", p["color"], p["pattern"], BRANDS[p["brand"]]) for u, p in enumerate(users)])

    summary = {
        "users": n_users, "items": n_items, "interactions": len(inter_rows),
        "avg_seq_len": len(inter_rows) / n_users, "categories": min(len(CATEGORIES), n_items),
        "image_size": image_size, "seed": seed,
    }
    knobs = {"taste_weights": [round(w, 6) for w in weights], "text_noise": text_noise}
    if vision_share is not None or text_noise:
        summary.update(vision_share=vision_share, text_noise=text_noise)
    # Only the last path component, so the README (and the byte-identity) does not depend on
    # where the dataset folder lives.
    out_label = os.path.basename(os.path.normpath(out_dir)) or "."
    command = (f"python -m recbole_reveal.commands.synthetic_data --out {out_label} --name {name} "
               f"--users {n_users} --items {n_items} --seed {seed} --image_size {image_size}"
               + (f" --vision_share {vision_share}" if vision_share is not None else "")
               + (f" --text_noise {text_noise}" if text_noise else ""))
    with atomic_open(os.path.join(root, "README.md"), "w", newline="\n") as f:
        f.write(dataset_readme(name, summary, command, out_label, knobs, README_FACTS))
    return summary

