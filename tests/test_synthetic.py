"""The synthetic dataset generator: file formats, consistency, determinism and the planted signal."""

import filecmp
import os
import re

import numpy as np
import pytest
from PIL import Image

from recbole_reveal.data import synthetic
from recbole_reveal.data.synthetic import generate_dataset

NAME = "synth"


def _read_tsv(path):
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    assert lines[-1] == "", f"{path} must end with a newline"
    header, rows = lines[0].split("\t"), [line.split("\t") for line in lines[1:-1]]
    assert all(len(r) == len(header) for r in rows), f"{path}: ragged rows"
    return header, rows


def _all_files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("synth"))
    summary = generate_dataset(out, NAME, n_users=60, n_items=40, seed=7, image_size=48)
    return os.path.join(out, NAME), summary


def test_files_and_headers(tiny):
    root, summary = tiny
    for f in (f"{NAME}.inter", f"{NAME}.item", f"{NAME}.review", "README.md"):
        assert os.path.isfile(os.path.join(root, f)), f
    inter_h, inter = _read_tsv(os.path.join(root, f"{NAME}.inter"))
    item_h, items = _read_tsv(os.path.join(root, f"{NAME}.item"))
    review_h, reviews = _read_tsv(os.path.join(root, f"{NAME}.review"))
    assert inter_h == ["user_id:token", "item_id:token", "rating:float", "timestamp:float"]
    assert item_h == ["item_id:token", "title:token_seq", "categories:token_seq", "brand:token",
                      "image:token"]
    assert review_h == ["user_id:token", "item_id:token", "timestamp:float", "review:token"]
    assert summary["users"] == 60 and summary["items"] == len(items) == 40
    assert summary["interactions"] == len(inter) == len(reviews)
    assert all(re.fullmatch(r"u\d{4}", r[0]) and re.fullmatch(r"i\d{4}", r[1]) for r in inter)
    assert all(1.0 <= float(r[2]) <= 5.0 for r in inter)
    # one review per interaction, same keys, in the same order
    assert [r[:2] + [r[3]] for r in inter] == [r[:3] for r in reviews]
    assert all(r[3] and "\t" not in r[3] for r in reviews)
    readme = open(os.path.join(root, "README.md"), encoding="utf-8").read()
    assert "SYNTHETIC" in readme and "python -m recbole_reveal.commands.synthetic_data" in readme


def test_sequences_sorted_and_item_sets_agree(tiny):
    root, _ = tiny
    _, inter = _read_tsv(os.path.join(root, f"{NAME}.inter"))
    _, items = _read_tsv(os.path.join(root, f"{NAME}.item"))
    users = [r[0] for r in inter]
    assert users == sorted(users), "rows must be grouped by user in sorted order"
    by_user = {}
    for u, _, _, t in inter:
        by_user.setdefault(u, []).append(float(t))
    lengths = [len(ts) for ts in by_user.values()]
    assert len(by_user) == 60 and min(lengths) >= 8 and max(lengths) <= 20
    assert all(np.all(np.diff(ts) > 0) for ts in by_user.values()), "timestamps must strictly increase"
    assert {r[1] for r in inter} == {r[0] for r in items}


def test_images_decode(tiny):
    root, _ = tiny
    _, items = _read_tsv(os.path.join(root, f"{NAME}.item"))
    for token, _, _, _, image in items:
        assert image == f"images/{token}.png"
        with Image.open(os.path.join(root, image)) as im:
            assert im.format == "PNG" and im.mode == "RGB" and im.size == (48, 48)
            assert np.asarray(im).std() > 10  # a drawing, not a blank canvas


def test_titles_never_reveal_looks(tiny):
    root, _ = tiny
    _, items = _read_tsv(os.path.join(root, f"{NAME}.item"))
    look = set(synthetic.LOOK_WORDS) | set(synthetic.COLORS) | set(synthetic.PATTERNS)
    for _, title, categories, brand, _ in items:
        words = {w.lower() for w in f"{title} {categories} {brand}".replace("_", " ").split()}
        assert not words & look, (title, categories, brand)
    _, reviews = _read_tsv(os.path.join(root, f"{NAME}.review"))
    mentions = np.mean([any(w in r[3].lower().split() for w in synthetic.COLORS) for r in reviews])
    assert 0.05 < mentions < 0.5  # reviews sometimes (not always) talk about colour


def test_same_seed_same_bytes_different_seed_differs(tmp_path):
    roots = {}
    for run, seed in (("a", 7), ("b", 7), ("c", 8)):
        generate_dataset(str(tmp_path / run / "atomic"), NAME, n_users=60, n_items=40, seed=seed,
                         image_size=48)
        roots[run] = str(tmp_path / run / "atomic" / NAME)
    files = _all_files(roots["a"])
    assert files == _all_files(roots["b"])
    _, mismatch, errors = filecmp.cmpfiles(roots["a"], roots["b"], files, shallow=False)
    assert not mismatch and not errors
    for f in (f"{NAME}.inter", f"{NAME}.item", f"{NAME}.review", "images/i0000.png"):
        assert not filecmp.cmp(os.path.join(roots["a"], f), os.path.join(roots["c"], f), shallow=False), f


def test_colour_preference_is_real(tmp_path):
    """Users' items share their (hidden) preferred colour far more often than another user's."""
    generate_dataset(str(tmp_path), NAME, n_users=300, n_items=80, seed=3, image_size=16)
    root = os.path.join(str(tmp_path), NAME)
    _, inter = _read_tsv(os.path.join(root, f"{NAME}.inter"))
    _, attrs = _read_tsv(os.path.join(root, "truth", "item_attributes.tsv"))
    _, prefs = _read_tsv(os.path.join(root, "truth", "user_preferences.tsv"))
    colour = {r[0]: r[3] for r in attrs}
    pref = np.array([r[1] for r in prefs])
    uid = np.array([int(r[0][1:]) for r in inter])
    item_colour = np.array([colour[r[1]] for r in inter])
    observed = np.mean(item_colour == pref[uid])
    # baseline: the same interactions scored against other users' preferences (controls for the
    # catalogue's colour mix and popularity)
    baseline = np.mean([np.mean(item_colour == np.roll(pref, k)[uid]) for k in range(1, 21)])
    assert observed > 2 * baseline and observed > 0.2, (observed, baseline)


def test_rejects_catalogue_it_cannot_cover(tmp_path):
    with pytest.raises(ValueError, match="cover every item"):
        generate_dataset(str(tmp_path), NAME, n_users=2, n_items=60, seed=1, image_size=16)


def test_imbalance_knobs_move_the_taste_to_the_images_and_blur_the_text():
    from recbole_reveal.data.synthetic import make_items, make_sequences, taste_weights

    assert taste_weights() == (synthetic.PREF_COLOR, synthetic.PREF_PATTERN, synthetic.PREF_BRAND)
    color, pattern, brand = taste_weights(1.0)
    assert brand == 0 and color == 2 * pattern and color + pattern == pytest.approx(3.7)
    items = make_items(120, seed=3, text_noise=1.0)
    assert all(it["shown_brand"] != it["brand"] for it in items)
    assert all(it["shown_brand"] == it["brand"] for it in make_items(120, seed=3))

    def colour_match(vision_share):
        users, sequences = make_sequences(make_items(120, seed=3), 300, seed=3, weights=taste_weights(vision_share))
        chosen = [items[i]["color"] == u["color"] for u, s in zip(users, sequences) for i in s]
        return np.mean(chosen)

    assert colour_match(1.0) > colour_match(0.0) + 0.15        # only the images' colour drives choice
    with pytest.raises(ValueError, match="vision_share"):
        taste_weights(1.5)
