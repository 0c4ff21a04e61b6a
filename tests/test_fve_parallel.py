"""Data-parallel FVE encoding with real worker processes (torchrun + accelerate's PartialState, two CPU
processes with gloo here; one per GPU on a GPU machine): the merged result equals one process's, in
request order, through the shared embedding cache; failures and bad settings are clear errors."""

import os

import numpy as np
import pytest

from recbole_reveal.fve.config import fve_settings
from recbole_reveal.fve.encoding.build import build_fve_encoder
from recbole_reveal.fve.encoding.cache.embeddings import EmbeddingCache
from recbole_reveal.fve.encoding.encoder import ItemRequest, item_requests
from recbole_reveal.fve.encoding.parallel import encode_data_parallel, resolve_num_processes
from recbole_reveal.fve.prompts.records import read_items
from recbole_reveal.fve.prompts.templates import build_initial_prompts
from recbole_reveal.infra.errors import ConfigError
from recbole_reveal.testing.vlms import build_tiny_qwen2_5_vl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "dataset_atomic", "synthetic-demo")
N = 7       # odd: the two shards differ in size


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    folder = build_tiny_qwen2_5_vl(str(tmp_path_factory.mktemp("vlm") / "tiny"))
    return fve_settings({"vlm_path": folder, "fve_device": "cpu", "fve_min_pixels": 56 * 56,
                         "fve_max_pixels": 112 * 112, "fve_preprocess_workers": 0, "fve_batch_size": 3})


@pytest.fixture(scope="module")
def requests_with_a_missing_image():
    records = build_initial_prompts("synthetic-demo", os.path.dirname(DEMO))
    requests = item_requests(read_items(os.path.join(DEMO, "synthetic-demo.item")), records, DEMO)[:N]
    gone = requests[4]
    return requests[:4] + [ItemRequest(gone.token, gone.image_path + ".missing", gone.prompt)] + requests[5:]


def test_two_processes_give_the_single_process_result(settings, requests_with_a_missing_image, tmp_path):
    requests = requests_with_a_missing_image
    single = build_fve_encoder(settings).encode_items(requests, EmbeddingCache(str(tmp_path / "single")))
    merged, description = encode_data_parallel(requests, settings, str(tmp_path / "cache"),
                                               str(tmp_path / "work"), num_processes=2)
    assert merged.tokens == [r.token for r in requests]
    np.testing.assert_allclose(merged.matrix, single.matrix, atol=1e-5)
    assert merged.encoded == single.encoded and len(merged.encoded) == N - 1
    assert list(merged.missing) == [requests[4].token] and merged.cached == []
    assert description["dim"] == merged.matrix.shape[1] and description["vlm_model_id"]
    log = open(tmp_path / "work" / "workers.log", encoding="utf-8").read()
    assert "[rank 0]" in log and "[rank 1]" in log
    # both workers wrote to the shared cache: a second call encodes nothing
    again, _ = encode_data_parallel(requests, settings, str(tmp_path / "cache"), str(tmp_path / "work"), 2)
    assert again.encoded == [] and len(again.cached) == N - 1
    assert np.array_equal(again.matrix, merged.matrix)


def test_a_failing_worker_is_an_error_quoting_its_log(settings, requests_with_a_missing_image, tmp_path):
    broken = dict(settings, vlm_path=str(tmp_path / "no-such-model"))
    with pytest.raises(RuntimeError, match="(?s)data-parallel encoding failed.*worker 0: .*no-such-model"):
        encode_data_parallel(requests_with_a_missing_image, broken, str(tmp_path / "c"), str(tmp_path / "w"), 2)


def test_process_count_settings():
    assert resolve_num_processes("auto", "cpu") == 1
    assert resolve_num_processes(3, "cpu") == 3
    for bad in (0, -1, "two", True, 1.5):
        with pytest.raises(ConfigError, match="fve_num_processes"):
            resolve_num_processes(bad, "cpu")
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="0 GPU"):
            resolve_num_processes(2, "cuda")
    with pytest.raises(ConfigError, match="fve_num_processes"):
        fve_settings({"fve_num_processes": 0})


def test_two_processes_answer_the_critic_as_one_does(settings, tmp_path):
    """The critic's fixed batches dealt to two worker processes: the same records as one process gives,
    each worker's answers in its own file of the answer log."""
    from recbole_reveal.fve.critic.critic import CriticRequest, run_critic
    from recbole_reveal.fve.critic.generation.transformers_backend import TransformersGenerator
    from recbole_reveal.fve.critic.generation.parallel import ParallelGenerator
    from recbole_reveal.fve.prompts.templates import load_templates
    from recbole_reveal.fve.vlm.load import load_vlm

    settings = dict(settings, fve_rewrite_batch_size=2, fve_rewrite_max_new_tokens=6)
    images = [os.path.join(DEMO, "images", f"i000{k}.png") for k in range(4)] + [os.path.join(DEMO, "gone.png")]
    requests = [CriticRequest(f"i{k}", path, f"An item image of thing {k}.", "pos", "fb")
                for k, path in enumerate(images)]
    single = TransformersGenerator.from_settings(settings, load_vlm(settings["vlm_path"], device="cpu"))
    expected, _ = run_critic(single, requests, load_templates())
    parallel = ParallelGenerator(settings, 2)
    assert parallel.identity() == single.identity()
    records, counts = run_critic(parallel, requests, load_templates(), answers_dir=str(tmp_path / "answers"))
    assert records == expected and counts["fallback: no usable image"] == 1
    rank_files = sorted(f for f in os.listdir(tmp_path / "answers") if f.endswith(".jsonl"))
    assert rank_files == ["answers_rank0.jsonl", "answers_rank1.jsonl"]
    lines = [open(tmp_path / "answers" / f).read().count("\n") for f in rank_files]
    assert lines == [3, 2]                       # batches 0 and 2 (items 0, 1, 4), batch 1 (items 2, 3)
