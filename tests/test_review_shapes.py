"""Reviews in the shapes people have, each feeding keywords into FVE's initial prompts: the 4-column
``.review`` file (evaluation reviews left out per user), a 2-column item-level ``.review`` file and a
review column in ``.item`` (item-level text: used whole, which the log says); every review problem is one
``error:`` line naming the fix."""

import logging
import os

import pytest

from recbole_reveal.commands.fve_prompts import cli
from recbole_reveal.fve.prompts.templates import build_initial_prompts
from recbole_reveal.infra.errors import ConfigError

ITEM_HEADER = "item_id:token\ttitle:token_seq\tcategories:token_seq\tbrand:token"
# u1: a(1) b(2) a(3) b(4) -> validation a@3 and test b@4 are evaluation interactions; u2: a(5) b(6) a(7)
INTER = [("u1", "a", 1), ("u1", "b", 2), ("u1", "a", 3), ("u1", "b", 4), ("u2", "a", 5), ("u2", "b", 6), ("u2", "a", 7)]
# the review of each interaction: "leaky" / "wobbly" are written at evaluation time only
REVIEW = {("u1", "a", 1): "sturdy canvas", ("u1", "b", 2): "glossy glaze", ("u1", "a", 3): "wobbly",
          ("u1", "b", 4): "leaky", ("u2", "a", 5): "sturdy", ("u2", "b", 6): "glossy", ("u2", "a", 7): "wobbly"}


def write(root, shape, name="rv"):
    folder = root / name
    folder.mkdir(parents=True)
    item_rows = [("a", "Acme tent", "Outdoors Tents", "Acme"), ("b", "Lumen mug", "Kitchen Mugs", "Lumen")]
    if shape == "item_column":          # several reviews of an item in one cell
        texts = {i: " | ".join(t for (u, it, ts), t in REVIEW.items() if it == i) for i in ("a", "b")}
        (folder / f"{name}.item").write_text(ITEM_HEADER + "\treview:token\n" + "".join(
            "\t".join(r) + f"\t{texts[r[0]]}\n" for r in item_rows))
    else:
        (folder / f"{name}.item").write_text(ITEM_HEADER + "\n" + "".join("\t".join(r) + "\n" for r in item_rows))
    (folder / f"{name}.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\n" + "".join(
        f"{u}\t{i}\t{t}\n" for u, i, t in INTER))
    if shape == "review_4col":
        (folder / f"{name}.review").write_text("user_id:token\titem_id:token\ttimestamp:float\treview:token\n" + "".join(
            f"{u}\t{i}\t{t}\t{text}\n" for (u, i, t), text in REVIEW.items()))
    elif shape == "review_2col":
        (folder / f"{name}.review").write_text("item_id:token\treview:token\n" + "".join(
            f"{i}\t{text}\n" for (u, i, t), text in REVIEW.items()))
    return folder


def keywords(root, reviews="exclude_eval", name="rv"):
    records = build_initial_prompts(name, str(root), top_k=5, reviews=reviews)
    return {r["item_id"]: r for r in records}


@pytest.mark.parametrize("shape", ["review_4col", "review_2col", "item_column"])
def test_every_shape_feeds_keywords_into_the_initial_prompts(tmp_path, caplog, shape):
    write(tmp_path, shape)
    with caplog.at_level(logging.INFO, logger="recbole_reveal.fve.prompts"):
        held = keywords(tmp_path)
    for item, word in (("a", "sturdy"), ("b", "glossy")):
        assert word in held[item]["keywords"] and word in held[item]["prompt"]
    every = keywords(tmp_path, "all")
    assert "leaky" in every["b"]["keywords"] and "wobbly" in every["a"]["keywords"]
    if shape == "review_4col":
        # each user's validation and test reviews are left out: the words written only then are absent
        assert "leaky" not in held["b"]["keywords"] and "wobbly" not in held["a"]["keywords"]
        assert "cannot leave out" not in caplog.text
    else:
        # item-level text has no user: nothing can be left out per user, and the log says so
        assert held == every
        assert "item-level review text" in caplog.text and "cannot leave out each user's evaluation" in caplog.text


def test_a_review_file_without_timestamps_leaves_out_by_user_and_item(tmp_path):
    folder = write(tmp_path, "review_4col")
    lines = (folder / "rv.review").read_text().splitlines()
    (folder / "rv.review").write_text("user_id:token\titem_id:token\treview:token\n" + "".join(
        "\t".join(line.split("\t")[:2] + line.split("\t")[3:]) + "\n" for line in lines[1:]))
    held = keywords(tmp_path)
    assert "leaky" not in held["b"]["keywords"] and "wobbly" not in held["a"]["keywords"]


def test_no_reviews_at_all_says_where_it_looked(tmp_path, caplog):
    folder = write(tmp_path, "none")
    with caplog.at_level(logging.WARNING, logger="recbole_reveal.fve.prompts"):
        records = keywords(tmp_path)
    assert all(r["keywords"] == [] for r in records.values())
    assert f"no review file {folder / 'rv.review'}" in caplog.text and "no review column" in caplog.text


@pytest.mark.parametrize("header, row, expected", [
    ("user_id:token\titem_id:token\ttimestamp:float\ttext:token", "u1\ta\t1\tnice",
     r"error: .*rv\.review has no review column \(columns: user_id, item_id, timestamp, text\).*review:token"),
    ("user_id:token\treview:token", "u1\tnice", r"error: .*rv\.review has no item_id column"),
    ("user_id:token\titem_id:token\ttimestamp:float\treview:token", "u1\ta\tyesterday\tnice",
     r"error: .*rv\.review, review 1: timestamp 'yesterday' is not a number"),
])
def test_review_file_problems_are_one_error_line_naming_the_fix(tmp_path, capsys, header, row, expected):
    import re

    folder = write(tmp_path, "none")
    (folder / "rv.review").write_text(f"{header}\n{row}\n")
    assert cli(["--dataset", "rv", "--data_path", str(tmp_path)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and re.match(expected, err[0]), err


def test_the_config_key_and_the_flag_have_one_name(tmp_path, capsys):
    write(tmp_path, "review_2col")
    out = tmp_path / "p.jsonl"
    assert cli(["--dataset", "rv", "--data_path", str(tmp_path), "--fve_keyword_reviews", "all", "--out", str(out)]) == 0
    with pytest.raises(SystemExit) as exit_:         # argparse's own one-line error for a bad choice
        cli(["--dataset", "rv", "--data_path", str(tmp_path), "--fve_keyword_reviews", "some"])
    assert exit_.value.code == 2
    assert "--fve_keyword_reviews" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"fve_keyword_reviews must be 'exclude_eval' or 'all'"):
        build_initial_prompts("rv", str(tmp_path), reviews="some")
    assert os.path.isfile(out)
