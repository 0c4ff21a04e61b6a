"""Behaviour that mutation testing (scripts/mutation.py, docs/testing.md) showed no test pinned."""

import os

import numpy as np

from recbole_reveal.fve.critic.critic import build_requests, feedback_summary
from recbole_reveal.fve.feedback.rankings import Rankings, item_record, item_statistics
from recbole_reveal.commands.fve_prompts import main as prompts_main
from recbole_reveal.fve.prompts.records import ItemMeta, read_items, read_prompts
from recbole_reveal.fve.prompts.templates import item_fields, load_templates

DEMO = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "dataset_atomic", "synthetic-demo")


def test_item_record_keeps_counts_whole_and_rates_exact():
    """The critic's feedback text and the saved records read these: counts as integers, rates and
    mean ranks to 6 decimals (not rounded to whole numbers)."""
    # item 1 is the target of three rows, ranked 1st, 3rd and 4th
    r = Rankings(users=np.arange(3), targets=np.array([1, 1, 1]), target_rank=np.array([1, 3, 4]),
                 top=np.array([[1, 2, 3, 4], [2, 3, 1, 4], [2, 3, 4, 1]]), n_items=5)
    rec = item_record(item_statistics(r, feedback_k=(1, 3), exposure_k=4), 1)
    assert rec["target_count"] == 3 and type(rec["target_count"]) is int and type(rec["exposure"]) is int
    assert rec["mean_rank"] == round(8 / 3, 6) and rec["top_k1_rate"] == round(1 / 3, 6)
    assert rec["top_k2_rate"] == round(2 / 3, 6)


def test_feedback_text_names_examples_only_when_there_are_some():
    stat = {"target_count": 2, "mean_rank": 7.5, "top_k1_rate": 0.0, "top_k2_rate": 0.5}
    assert "instead" not in feedback_summary("pos", stat, [], str)
    assert feedback_summary("pos", stat, [4], lambda i: f"item {i}").endswith("instead: item 4.")


def test_requests_show_as_many_examples_as_asked():
    items = read_items(os.path.join(DEMO, "synthetic-demo.item"))[:5]
    tokens = ["[PAD]"] + [it.item_id for it in items]
    prompts = [{"item_id": it.item_id, "prompt": "An item image."} for it in items]
    # item 1 is over-ranked for three rows whose targets are items 2, 3 and 4
    r = Rankings(users=np.arange(3), targets=np.array([2, 3, 4]), target_rank=np.array([2, 2, 2]),
                 top=np.array([[1, 2, 3], [1, 3, 2], [1, 4, 2]]), n_items=6)
    stats = item_statistics(r, feedback_k=(1, 2), exposure_k=3)
    for n in (1, 3):
        request, = build_requests([(1, "neg")], stats, r, tokens, items, prompts, DEMO, (1, 2), n_examples=n)
        assert request.feedback.split("actually chose: ")[1].count(";") == n - 1


def test_an_empty_brand_reads_as_the_templates_empty_field():
    fields = item_fields(ItemMeta("x", "", (), "", ""), [], load_templates())
    assert (fields["brand"], fields["title"], fields["category"]) == ("unknown brand", "unnamed item", "product")


def test_prompt_command_defaults_its_output_and_takes_every_review_choice(tmp_path, caplog):
    folder = tmp_path / "toy"
    folder.mkdir()
    (folder / "toy.item").write_text("item_id:token\ttitle:token_seq\na\tTent\nb\tMug\n")
    (folder / "toy.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\nu1\ta\t1\n")
    (folder / "toy.review").write_text("user_id:token\titem_id:token\ttimestamp:float\treview:token\n"
                                       "u1\ta\t1\tgreen canvas\n")
    with caplog.at_level("INFO", logger="recbole_reveal.fve.prompts"):
        out = prompts_main(["--dataset", "toy", "--data_path", str(tmp_path), "--fve_keyword_reviews", "all", "--fve_keywords_topk", "1"])
    assert out == str(folder / "fve" / "prompts_initial.jsonl")
    assert [r["keywords"] for r in read_prompts(out)] == [["canvas"], []]
    assert "1 of 2 items have no review keywords" in caplog.text
    (folder / "toy.review").unlink()
    with caplog.at_level("INFO", logger="recbole_reveal.fve.prompts"):
        prompts_main(["--dataset", "toy", "--data_path", str(tmp_path)])
    assert f"no review file {folder / 'toy.review'}" in caplog.text


def test_vision_feature_cache_bounds_memory_and_round_trips_through_disk(tmp_path):
    import torch

    from recbole_reveal.fve.encoding.cache.vision import VisionFeatureCache, VisionFeatures

    def feats(value, deepstack=2):
        return VisionFeatures(torch.full((4, 2), float(value)), [torch.full((4, 2), -float(value) - d) for d in range(deepstack)],
                              (1, 2, 2))

    one = feats(1).nbytes                          # 3 tensors of 8 float32 = 96 bytes
    memory = VisionFeatureCache(max_bytes=2 * one)
    memory.put("a", feats(1))
    memory.put("b", feats(2))
    assert memory.stats()["bytes"] == 2 * one and len(memory) == 2
    memory.put("c", feats(3))                      # evicts the least recently used: a
    assert memory.get("a") is None and memory.get("c").pooler[0, 0] == 3
    assert memory.get("never") is None
    assert memory.stats() == {"memory_hits": 1, "disk_hits": 0, "misses": 2, "entries": 2, "bytes": 2 * one,
                              "evicted": 0}                 # counts on-disk evictions only
    memory.reset_stats()
    assert (memory.memory_hits, memory.disk_hits, memory.misses) == (0, 0, 0)

    VisionFeatureCache(directory=str(tmp_path)).put("k1", feats(5))
    disk = VisionFeatureCache(directory=str(tmp_path))
    got = disk.get("k1")
    assert disk.stats()["disk_hits"] == 1 and len(disk) == 1 and disk.peek("k1") is got
    assert got.grid == (1, 2, 2) and len(got.deepstack) == 2
    assert torch.equal(got.pooler, feats(5).pooler) and torch.equal(got.deepstack[1], feats(5).deepstack[1])
    assert disk.get("k1") is got and disk.stats()["memory_hits"] == 1


def test_feature_sets_write_their_provenance_and_refuse_bad_tokens(tmp_path):
    import json

    import pytest

    from recbole_reveal.data.feature_store import feature_paths, file_sha256, load_item_features, save_item_features
    from recbole_reveal.infra.errors import FeatureFileError

    matrix = np.arange(6, dtype=np.float32).reshape(3, 2)
    save_item_features(str(tmp_path), "set/a", ["x", "y", "z"], matrix, metadata={"encoder": "test"})
    npy, items, meta = feature_paths(str(tmp_path), "set/a")
    with open(meta, encoding="utf-8") as f:
        provenance = json.load(f)
    assert provenance == {"encoder": "test", "rows": 3, "dim": 2, "items_sha256": file_sha256(items),
                          "matrix_sha256": file_sha256(npy)}
    # no temporary file left (the set's lock file stays: .a.lock)
    assert sorted(os.listdir(tmp_path / "set")) == [".a.lock", "a.items", "a.json", "a.npy"]
    with pytest.raises(ValueError, match=r"feature set 'b': matrix shape \(3, 2\) does not match 2 item tokens"):
        save_item_features(str(tmp_path), "b", ["x", "y"], matrix)
    with pytest.raises(ValueError, match="invalid item tokens"):
        save_item_features(str(tmp_path), "b", ["x", "y\nz", "w"], matrix)
    with open(items, "w", encoding="utf-8") as f:
        f.write("x\ny\n")
    with pytest.raises(FeatureFileError, match="2 item tokens but .* has 3 rows"):
        load_item_features(str(tmp_path), "set/a")


def test_contract_errors_name_the_model_and_what_is_missing():
    from types import SimpleNamespace

    import pytest

    from recbole_reveal.model.abstract_recommender import MultimodalSequentialRecommender as Contract

    class Backbone:
        vision_modules = ()

        def named_modules(self):
            return iter([("", self)])

    with pytest.raises(NotImplementedError, match="^Backbone declares no vision_modules"):
        Contract.vision_parameters(Backbone())
    Backbone.vision_modules = ("image_proj",)
    with pytest.raises(AttributeError, match="^Backbone.vision_modules names 'image_proj', which is not a sub-module"):
        Contract.vision_parameters(Backbone())
    text_only = SimpleNamespace(item_features={"text": np.zeros((2, 2))})
    with pytest.raises(ValueError, match="no 'vision' item features: .*MultimodalSequentialDataset hook"):
        Contract.item_feature_table(Backbone(), text_only, "vision")
    with pytest.raises(ValueError, match="no 'text' item features"):
        Contract.item_feature_table(Backbone(), SimpleNamespace(), "text")


def test_zeroed_modalities_config_zeroes_for_the_models_whole_life(tiny_config):
    import pytest
    import torch

    from helpers import build_pipeline, first_batch

    _, (train_data, _, _), model, _ = build_pipeline("M3SRec", dict(tiny_config, zeroed_modalities=["vision"]))
    model.eval()
    batch = first_batch(train_data)
    with torch.no_grad():
        before = float(model.calculate_loss(batch))
        model.vision_mean_table.weight[1:] = model.vision_mean_table.weight[1:].roll(1, dims=0)
        model.vision_cov_table.weight[1:] = model.vision_cov_table.weight[1:].roll(1, dims=0)
        assert float(model.calculate_loss(batch)) == before
    with pytest.raises(ValueError, match=r"zeroed_modalities must be a list drawn from \['text', 'vision'\]"):
        build_pipeline("M3SRec", dict(tiny_config, zeroed_modalities=["audio"]))


def test_selection_is_logged_with_its_counts(caplog):
    from recbole_reveal.fve.feedback.rankings import select_items

    stats = {"priority": np.array([0.0, 3.0, 2.0, 0.0]), "pos": np.array([0.0, 1.0, 0.0, 0.0]),
             "neg": np.array([0.0, 0.0, 1.0, 0.0])}
    with caplog.at_level("INFO", logger="recbole_reveal.fve.feedback.rankings"):
        assert select_items(stats, 1.0) == [(1, "pos"), (2, "neg")]
    assert [r.getMessage() for r in caplog.records] == [
        "FVE feedback: 2 of 3 items selected for rewriting (fraction 1; 2 with priority > 0): 1 pos, 1 neg"]
