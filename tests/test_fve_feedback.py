"""FVE feedback: statistics, priority, selection and labels on hand-made rankings (expectations worked
out by hand in the comments), and rankings from a real tiny RecBole model that agree with RecBole's
own evaluation."""

import math

import numpy as np
import pytest

from helpers import build_pipeline
from recbole_reveal.fve.feedback.rankings import (
    Rankings, compute_rankings, feedback_examples, feedback_settings, item_record, item_statistics,
    select_items,
)
from recbole_reveal.infra.errors import ConfigError

L2, L3, L5 = math.log(2), math.log(3), math.log(5)


def hand_rankings():
    """Items 1..5 (0 = padding); every row ranks all five items.

    row 0: target 1, ranking [2, 1, 3, 4, 5] -> rank 2
    row 1: target 1, ranking [1, 2, 3, 4, 5] -> rank 1
    row 2: target 3, ranking [2, 4, 5, 1, 3] -> rank 5
    row 3: target 2, ranking [2, 3, 1, 4, 5] -> rank 1
    """
    top = np.array([[2, 1, 3, 4, 5], [1, 2, 3, 4, 5], [2, 4, 5, 1, 3], [2, 3, 1, 4, 5]])
    return Rankings(users=np.arange(1, 5), targets=np.array([1, 1, 3, 2]), target_rank=np.array([2, 1, 5, 1]),
                    top=top, n_items=6)


def stats_of(rankings):
    # k1 = 1, k2 = 2 (wrong hits counted in the top 2), exposure in the top 3
    return item_statistics(rankings, feedback_k=(1, 2), exposure_k=3)


def test_statistics_on_a_hand_made_ranking():
    s = stats_of(hand_rankings())
    np.testing.assert_array_equal(s["target_count"], [0, 2, 1, 1, 0, 0])
    np.testing.assert_array_equal(s["target_hits"], [0, 2, 1, 0, 0, 0])          # rank <= 2
    np.testing.assert_allclose(s["mean_rank"][1:], [1.5, 1.0, 5.0, np.nan, np.nan])
    assert np.isnan(s["mean_rank"][0])
    np.testing.assert_allclose(s["top_k1_rate"], [0, 0.5, 1, 0, 0, 0])
    np.testing.assert_allclose(s["top_k2_rate"], [0, 1, 1, 0, 0, 0])
    # top-2 lists without the target: row 0 [2@1], row 1 [2@2], row 2 [2@1, 4@2], row 3 [3@2]
    np.testing.assert_array_equal(s["wrong"], [0, 0, 3, 1, 1, 0])
    np.testing.assert_allclose(s["wrong_top_k1"], [0, 0, 2 / 3, 0, 0, 0])
    # outranks the row's target: item 2 in rows 0 (1 < 2) and 2 (1 < 5), not row 1 (2 > 1);
    # item 4 in row 2 (2 < 5); item 3 in row 3 (2 > 1): no
    np.testing.assert_allclose(s["danger"], [0, 0, 2 / 3, 0, 1, 0])
    np.testing.assert_array_equal(s["exposure"], [0, 3, 4, 3, 1, 1])


def test_priority_follows_the_reference_rule():
    s = stats_of(hand_rankings())
    # pos = log(1+count) * (mean_rank / 5 + 0.5 (1 - top1) + 0.5 (1 - top2)); max_rank = 5
    pos = [0, L3 * (0.3 + 0.25), L2 * 0.2, L2 * (1 + 0.5 + 0.5), 0, 0]
    # neg = log(1+wrong) * (0.5 danger + 0.5 wrong_top1)
    neg = [0, 0, math.log(4) * (2 / 3), 0, L2 * 0.5, 0]
    np.testing.assert_allclose(s["pos"], pos, atol=1e-12)
    np.testing.assert_allclose(s["neg"], neg, atol=1e-12)
    max_pos, max_neg = 2 * L2, math.log(4) * 2 / 3
    prio = [0, math.log(4) * pos[1] / max_pos, L5 * (pos[2] / max_pos + 1), math.log(4) * 1.0,
            L2 * neg[4] / max_neg, 0]
    np.testing.assert_allclose(s["priority"], prio, atol=1e-12)
    np.testing.assert_allclose(s["priority"][1:5], [0.55 * L3, 1.1 * L5, 2 * L2, 0.375 * L2], atol=1e-12)


def test_selection_fraction_order_and_labels():
    s = stats_of(hand_rankings())
    # 5 items: ceil(0.25 * 5) = 2; item 2 (1.77) is over-ranked, item 3 (1.39) under-ranked
    assert select_items(s, 0.25) == [(2, "neg"), (3, "pos")]
    # everything with priority > 0 (item 5 has only exposure, no error: priority 0)
    assert select_items(s, 1.0) == [(2, "neg"), (3, "pos"), (1, "pos"), (4, "neg")]
    assert select_items(s, 0.01) == [(2, "neg")]
    with pytest.raises(ValueError, match="fve_rewrite_fraction"):
        select_items(s, 0)


def test_ties_are_broken_by_the_lower_item_id():
    # two symmetric items: each is the other's wrong rank-1 item
    r = Rankings(users=np.array([1, 2]), targets=np.array([2, 1]), target_rank=np.array([2, 2]),
                 top=np.array([[1, 2], [2, 1]]), n_items=3)
    s = item_statistics(r, feedback_k=(1, 1), exposure_k=2)
    assert s["priority"][1] == s["priority"][2] > 0
    assert select_items(s, 0.5) == [(1, "pos")]      # pos_n = neg_n = 1: labelled pos
    assert select_items(s, 1.0) == [(1, "pos"), (2, "pos")]


def test_feedback_examples_and_item_record():
    r = hand_rankings()
    assert feedback_examples(r, 3, "pos") == [2]          # row 2 ranked item 2 first instead
    assert feedback_examples(r, 2, "neg") == [1, 3]       # rows 0 and 2 chose items 1 and 3
    assert feedback_examples(r, 1, "pos") == [2]          # row 0 only (row 1 had it first)
    with pytest.raises(ValueError, match="label"):
        feedback_examples(r, 1, "up")
    rec = item_record(stats_of(r), 4)
    assert rec["mean_rank"] is None and rec["wrong"] == 1 and rec["danger"] == 1.0 and rec["target_count"] == 0


def test_statistics_need_enough_of_the_ranking():
    r = hand_rankings()
    short = Rankings(r.users, r.targets, r.target_rank, r.top[:, :2], n_items=6)
    with pytest.raises(ValueError, match="top_n=3"):
        item_statistics(short, feedback_k=(1, 2), exposure_k=3)
    with pytest.raises(ValueError, match="one row per evaluation row"):
        Rankings(r.users[:2], r.targets, r.target_rank, r.top, n_items=6)


def test_feedback_settings_defaults_and_errors():
    assert feedback_settings() == {"fve_feedback_k": [10, 20], "fve_exposure_k": 50, "fve_rewrite_fraction": 0.25}
    assert feedback_settings({"fve_rewrite_fraction": 1})["fve_rewrite_fraction"] == 1.0
    for bad in ({"fve_feedback_k": [20, 10]}, {"fve_feedback_k": 10}, {"fve_exposure_k": 5},
                {"fve_rewrite_fraction": 0}, {"fve_rewrite_fraction": 1.5}, {"fve_rewrite_fraction": True}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            feedback_settings(bad)


def test_rankings_of_a_trained_model_agree_with_recbole_evaluation(tiny_config):
    config, (train, valid, test), model, trainer = build_pipeline(
        "M3SRec", dict(tiny_config, epochs=2, show_progress=False))
    trainer.fit(train, valid, saved=False, show_progress=False)
    expected = trainer.evaluate(test, load_best_model=False)
    model.train()
    r = compute_rankings(model, test, top_n=50)
    assert model.training                                  # mode restored
    n_items = test._dataset.item_num
    assert r.n_items == n_items and r.top.shape == (len(test._dataset), min(50, n_items - 1))
    places = config["metric_decimal_place"]
    for k in (10, 20):
        assert round(r.recall(k), places) == pytest.approx(expected[f"recall@{k}"])
        assert round(r.ndcg(k), places) == pytest.approx(expected[f"ndcg@{k}"])
    assert 0 < r.recall(10) < 1                            # a real, imperfect ranking
    # the top list and the target's rank are one ordering; padding never ranks
    listed = r.target_rank <= r.top.shape[1]
    assert (r.top[listed, r.target_rank[listed] - 1] == r.targets[listed]).all()
    assert (r.top != 0).all() and (r.targets > 0).all()
    assert sorted(set(r.users.tolist())) == sorted(r.users.tolist())   # one row per test user
    again = compute_rankings(model, test, top_n=50)
    np.testing.assert_array_equal(again.top, r.top)
    np.testing.assert_array_equal(again.target_rank, r.target_rank)
    stats = item_statistics(r)
    assert stats["target_count"].sum() == len(r.targets)
    assert stats["exposure"].sum() == r.top.size
    chosen = select_items(stats, 0.25)
    assert 0 < len(chosen) <= math.ceil(0.25 * (n_items - 1))
    assert {label for _, label in chosen} <= {"pos", "neg"}


def test_rankings_of_a_general_model_mask_the_history_as_recbole_does(tiny_config):
    config, (train, valid, test), model, trainer = build_pipeline("BPR", dict(
        tiny_config, epochs=1, show_progress=False, loss_type="BPR",
        train_neg_sample_args={"distribution": "uniform", "sample_num": 1}))
    trainer.fit(train, valid, saved=False, show_progress=False)
    expected = trainer.evaluate(test, load_best_model=False)
    r = compute_rankings(model, test, top_n=50)
    places = config["metric_decimal_place"]
    for k in (10, 20):
        assert round(r.recall(k), places) == pytest.approx(expected[f"recall@{k}"])
        assert round(r.ndcg(k), places) == pytest.approx(expected[f"ndcg@{k}"])
    # the user's training items are never ranked; places only they could fill hold 0
    for user, top in zip(r.users, r.top):
        history = set(test.uid2history_item[user].tolist())
        assert history and not history & set(top.tolist())
        assert (top == 0).sum() == len(history)


def test_examples_from_the_index_equal_the_old_per_item_scan():
    """One indexed pass gives every item's examples exactly as the old scan of all rows did, on
    random rankings with real-shaped rows (distinct items, trailing 0s) and malformed ones (repeats)."""
    from fve_reference import old_feedback_examples

    from recbole_reveal.fve.feedback.rankings import ExampleIndex

    rng = np.random.default_rng(0)
    for trial in range(24):
        n_items, rows, width = int(rng.integers(3, 30)), int(rng.integers(1, 120)), int(rng.integers(1, 12))
        if trial % 2:
            top = rng.integers(0, n_items, size=(rows, width))
        else:
            top = np.stack([np.r_[rng.permutation(np.arange(1, n_items)), np.zeros(width, int)][:width]
                            for _ in range(rows)])
        r = Rankings(users=np.arange(rows), targets=rng.integers(1, n_items, rows),
                     target_rank=rng.integers(1, n_items + 1, rows), top=top, n_items=n_items)
        index = ExampleIndex(r, block_rows=int(rng.integers(1, 40)))
        for item in range(n_items):
            for label in ("pos", "neg"):
                for limit in (1, 3, 50):
                    assert index.examples(item, label, limit) == old_feedback_examples(r, item, label, limit)
    assert feedback_examples(r, 1, "pos") == old_feedback_examples(r, 1, "pos")    # built once, kept on r
    assert r._examples is not None and feedback_examples(r, 1, "neg") == old_feedback_examples(r, 1, "neg")
