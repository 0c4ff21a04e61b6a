"""Places where two things of the same shape could trade places unnoticed, each told apart by value:
valid/test results and masked-modality results of a run, mean/covariance in the Wasserstein
distances, HM4SR's per-stream experts, the evaluation rows of the FVE rankings (users and their
targets), and the checkpoint's trainer state written by rank 0 only. The list of swap points and the
test pinning each is in docs/testing.md."""

import csv
import glob
import os

import pytest
import torch

from recbole_reveal import run_recbole_reveal
from recbole_reveal.adaptation.compat import load_checkpoint
from recbole_reveal.adaptation.trainer import TRAINER_STATE_KEY
from recbole_reveal.fve.feedback.rankings import compute_rankings
from recbole_reveal.model.hm4sr_layers import AlignMoE, TemporalMoE
from recbole_reveal.model.wasserstein_layers import wasserstein_distance, wasserstein_distance_matmul
from helpers import build_pipeline


def _metrics(result):
    return {k: round(float(v), 6) for k, v in result.items()}


def test_run_results_are_valid_test_and_each_named_modality_zeroed(tiny_config):
    cfg = dict(tiny_config, epochs=2, eval_zeroed_modalities=["text", "vision"])
    result = run_recbole_reveal("M3SRec_REVEAL", "tiny", config_dict=cfg)
    checkpoint, = glob.glob(os.path.join(cfg["checkpoint_dir"], "*.pth"))
    # the same checkpoint evaluated independently on each loader and with each modality zeroed
    _, (_, valid_data, test_data), model, trainer = build_pipeline("M3SRec_REVEAL", cfg)
    evaluate = lambda data: _metrics(trainer.evaluate(data, load_best_model=True, model_file=checkpoint))  # noqa: E731
    expected = {"valid": evaluate(valid_data), "test": evaluate(test_data)}
    for modality in ("text", "vision"):
        with model.zeroed_modalities(modality):
            expected[modality] = evaluate(test_data)
    assert len({tuple(v.values()) for v in expected.values()}) == 4, "all four must differ to be told apart"
    assert _metrics(result["best_valid_result"]) == expected["valid"]
    assert _metrics(result["test_result"]) == expected["test"]
    assert {m: _metrics(r) for m, r in result["masked_test_results"].items()} == {
        "text": expected["text"], "vision": expected["vision"]}


def test_wasserstein_distances_give_mean_and_covariance_their_own_roles():
    """W2^2 between diagonal Gaussians = |m1 - m2|^2 + |sqrt(c1) - sqrt(c2)|^2, in both forms."""
    m1, m2 = torch.tensor([[0.0, 0.0]]), torch.tensor([[3.0, 4.0]])
    c1, c2 = torch.tensor([[1.0, 1.0]]), torch.tensor([[4.0, 9.0]])
    assert wasserstein_distance(m1, c1, m2, c1).item() == pytest.approx(25.0)      # means only
    assert wasserstein_distance(m1, c1, m1, c2).item() == pytest.approx(1.0 + 4.0)  # covariances only
    assert wasserstein_distance(m1, c1, m2, c2).item() == pytest.approx(30.0)
    assert wasserstein_distance_matmul(m1, c1, m2, c2).item() == pytest.approx(30.0)
    assert wasserstein_distance_matmul(m1, c1, m1, c2).item() == pytest.approx(5.0)


def test_hm4sr_streams_keep_their_own_experts():
    torch.manual_seed(0)
    h = 4
    id_emb, text, vision = (torch.randn(2, 3, h) for _ in range(3))
    align = AlignMoE(h, 2, [1.0, 1.0, 1.0])
    joint = torch.cat([id_emb, text, vision], dim=-1)
    out = align(id_emb, text, vision)
    for stream, experts, result in zip((id_emb, text, vision),
                                       (align.id_experts, align.text_experts, align.vision_experts), out):
        torch.testing.assert_close(result, stream + experts(stream, joint))
    temporal = TemporalMoE(h, 3, n_buckets=4, interval_scale=1.0)
    times = torch.tensor([[0.0, 1.0, 3.0], [0.0, 2.0, 2.5]])
    time_embedding = temporal.time_embedding(times, torch.ones_like(times, dtype=torch.bool))
    route = torch.softmax(temporal.gate(time_embedding), dim=-1)
    out = temporal(id_emb, text, vision, time_embedding)
    for stream, experts, result in zip((id_emb, text, vision),
                                       (temporal.id_experts, temporal.text_experts, temporal.vision_experts), out):
        torch.testing.assert_close(result, experts(stream, route))


def _last_two_by_time(inter_path):
    per_user = {}
    with open(inter_path, encoding="utf-8") as f:
        rows = csv.reader(f, delimiter="\t")
        next(rows)
        for user, item, t in rows:
            per_user.setdefault(user, []).append((float(t), item))
    return {user: [item for _, item in sorted(events)[-2:]] for user, events in per_user.items()}


def test_rankings_rows_are_each_users_own_target(tiny_config, tiny_root):
    """compute_rankings pairs each evaluation row's user with that user's ground truth: on the
    validation loader the second-to-last item by time, on the test loader the last."""
    _, (_, valid_data, test_data), model, _ = build_pipeline("M3SRec", tiny_config)
    truth = _last_two_by_time(os.path.join(tiny_root, "tiny", "tiny.inter"))
    dataset = valid_data._dataset
    users, items = dataset.field2id_token["user_id"], dataset.field2id_token["item_id"]
    for loader, position in ((valid_data, 0), (test_data, 1)):
        rankings = compute_rankings(model, loader, top_n=20)
        pairs = {(str(users[u]), str(items[t])) for u, t in zip(rankings.users, rankings.targets)}
        assert pairs == {(u, last_two[position]) for u, last_two in truth.items()}


def test_trainer_state_is_written_by_rank_0_only(tiny_config):
    _, _, _, trainer = build_pipeline("M3SRec_REVEAL", tiny_config)
    path = trainer.saved_model_file
    trainer.config["single_spec"] = False          # as under DDP: one trainer per rank
    trainer.config["local_rank"] = 1
    trainer._save_checkpoint(0, verbose=False)
    assert not os.path.exists(path), "only rank 0 writes the checkpoint"
    trainer.config["local_rank"] = 0
    trainer._save_checkpoint(0, verbose=False)
    saved = load_checkpoint(path, map_location="cpu")      # weights_only=True: our own checkpoint loads
    state = trainer.trainer_state()
    assert saved[TRAINER_STATE_KEY] == state and set(state) >= {"avl", "avl_step", "avl_current_k"}
