"""Runs that share a folder, as real processes started together: they never interleave their files.

- two writers of one feature set and a reader: every read is one writer's complete set;
- two training runs on one checkpoint folder: each its own checkpoint and the numbers it would get alone;
- two FVE loops on one feature folder (another learning rate): the second stops with an error naming
  the first (pid, host, command) and leaves the first's files alone; once the first has ended, a run
  with its config gets the folder and finds every stage done.
"""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Every process imports first, then waits for the others (a barrier of files), then works for the same
# few seconds: the writes and reads overlap however long the imports take on a busy machine.
BARRIER = r"""
import os, sys, time
def barrier(folder, name, parties):
    open(os.path.join(folder, name), "w").close()
    while len([n for n in os.listdir(folder) if n.startswith("ready-")]) < parties:
        time.sleep(0.01)
"""

WRITER = BARRIER + r"""
import numpy as np
from recbole_reveal.data.feature_store import save_item_features
folder, sync, value, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
tokens = [f"i{i}" for i in range(200)]
# the row order differs between writers: a mixed set would pair one writer's .items with the other's .npy
order = tokens if value == 1 else tokens[::-1]
matrix = np.full((200, 64), value, dtype=np.float32)
barrier(sync, f"ready-{value}", 3)
end, rounds = time.monotonic() + seconds, 0
while time.monotonic() < end:
    save_item_features(folder, "shared", order, matrix, {"writer": value, "round": rounds})
    rounds += 1
print(rounds)
"""

READER = BARRIER + r"""
from recbole_reveal.data.feature_store import load_item_features
folder, sync, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
seen = {1.0: 0, 2.0: 0}
barrier(sync, "ready-reader", 3)
end = time.monotonic() + seconds
while time.monotonic() < end:
    tokens, m = load_item_features(folder, "shared")
    value = float(m[0, 0])
    assert (m == value).all(), "a matrix mixed from two writers"
    assert tokens[0] == ("i0" if value == 1 else "i199"), f"rows of writer {value} under the other's tokens"
    seen[value] += 1
print(seen)
"""


def _env():
    return dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))


def test_two_writers_and_a_reader_of_one_feature_set(tmp_path):
    folder, sync = str(tmp_path / "features"), str(tmp_path / "sync")
    os.makedirs(sync)
    from recbole_reveal.data.feature_store import save_item_features

    save_item_features(folder, "shared", [f"i{i}" for i in range(200)], np.ones((200, 64), np.float32), {})
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, folder, sync, v, "4"], stdout=subprocess.PIPE,
                                text=True, env=_env()) for v in ("1", "2")]
    reader = subprocess.run([sys.executable, "-c", READER, folder, sync, "4"], capture_output=True, text=True,
                            env=_env(), timeout=600)
    rounds = [int(w.communicate(timeout=600)[0]) for w in writers]
    assert [w.returncode for w in writers] == [0, 0]
    assert reader.returncode == 0, reader.stderr[-2000:]
    seen = eval(reader.stdout)                      # {1.0: reads of writer 1's set, 2.0: of writer 2's}
    assert min(rounds) > 5 and sum(seen.values()) > 5, (rounds, seen)
    assert not [n for n in os.listdir(folder) if n.startswith(".tmp-")]


def _train(data_root, saved, seed=7):
    return subprocess.Popen(
        [sys.executable, os.path.join(REPO, "run_recbole_reveal.py"), "--model=M3SRec_REVEAL", "--dataset=tiny",
         f"--data_path={data_root}", f"--checkpoint_dir={saved}", "--epochs=1", "--hidden_size=16",
         "--inner_size=32", "--n_heads=2", "--MAX_ITEM_LIST_LENGTH=10", "--train_batch_size=64",
         "--stopping_step=100", f"--seed={seed}", "--show_progress=False", "--state=WARNING"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())


def test_two_training_runs_share_a_checkpoint_folder(tiny_root, tmp_path):
    saved = tmp_path / "saved"
    runs = [_train(tiny_root, saved) for _ in range(2)]
    outs = [r.communicate(timeout=600) for r in runs]
    assert [r.returncode for r in runs] == [0, 0], [o[1][-2000:] for o in outs]
    tests = [[line for line in o[0].splitlines() if line.startswith("test:")] for o in outs]
    assert tests[0] and tests[0] == tests[1]            # same config and seed: the same numbers, each its own
    assert len([n for n in os.listdir(saved) if n.endswith(".pth")]) == 2
    assert not [n for n in os.listdir(saved) if ".tmp" in n]


# ---- the FVE loop ----------------------------------------------------------------------------------

NAME = "fvelock"
N_ITEMS = 24


@pytest.fixture(scope="module")
def fve_data(tmp_path_factory):
    from recbole_reveal.data.feature_store import save_item_features
    from recbole_reveal.data.synthetic import generate_dataset
    from recbole_reveal.testing.vlms import build_tiny_qwen2_5_vl

    root = str(tmp_path_factory.mktemp("fve_lock_data"))
    generate_dataset(root, NAME, n_users=40, n_items=N_ITEMS, seed=3, image_size=32)
    with open(os.path.join(root, NAME, f"{NAME}.item"), encoding="utf-8") as f:
        tokens = [line.split("\t")[0] for line in f.read().splitlines()[1:] if line]
    features = os.path.join(root, "features")
    save_item_features(features, "text_minilm", tokens, np.random.default_rng(0).normal(
        size=(len(tokens), 8)).astype(np.float32))
    vlm = build_tiny_qwen2_5_vl(str(tmp_path_factory.mktemp("vlm") / "tiny"))
    return root, features, vlm


def _fve(data_root, features, vlm, learning_rate):
    return subprocess.Popen(
        [sys.executable, os.path.join(REPO, "run_recbole_reveal.py"), "--model=M3SRec_REVEAL", f"--dataset={NAME}",
         f"--data_path={data_root}", f"--feature_dir={features}", f"--vlm_path={vlm}", "--fve_device=cpu",
         "--fve_cycles=2", "--fve_preprocess_workers=0", "--fve_rewrite_max_new_tokens=4", "--epochs=1",
         "--hidden_size=16", "--inner_size=32", "--n_heads=2", "--MAX_ITEM_LIST_LENGTH=10",
         f"--learning_rate={learning_rate}", "--show_progress=False", "--state=WARNING"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())


def _wait_for_holder(lock, proc, timeout=300):
    """Until the first run holds the lock (its holder record is written), so the second surely overlaps."""
    start = time.monotonic()
    while time.monotonic() - start < timeout and proc.poll() is None:
        if os.path.isfile(lock) and os.path.getsize(lock) > 0:
            return
        time.sleep(0.1)
    raise AssertionError(f"the first run never took {lock}: {proc.communicate()[1][-2000:]}")


def test_a_second_fve_loop_on_one_feature_folder_stops_and_leaves_the_first_alone(fve_data, tmp_path):
    import shutil

    data_root, shared, vlm = fve_data
    features = str(tmp_path / "features")
    shutil.copytree(shared, features)
    first = _fve(data_root, features, vlm, 0.001)
    _wait_for_holder(os.path.join(features, "fve", ".reveal.lock"), first)
    second = _fve(data_root, features, vlm, 0.005)
    out2, err2 = second.communicate(timeout=600)
    out1, err1 = first.communicate(timeout=900)
    assert first.returncode == 0, err1[-3000:]
    assert second.returncode == 2, err2[-3000:]
    errors = [line for line in err2.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "is in use by pid" in errors[0] and str(first.pid) in errors[0], errors
    assert "Traceback" not in err2
    # the run folder holds the first run's config, and the digests it recorded are of its own files
    from recbole_reveal.infra.files import file_sha256

    run_dir = os.path.join(features, "fve", "run")
    state = json.load(open(os.path.join(run_dir, "stages.json")))
    assert state["config"]["learning_rate"] == 0.001
    assert state["stages"]["cycle_1/train"]["artefact_sha256"] == [file_sha256(os.path.join(run_dir, "cycle_1",
                                                                                                 "model.pth"))]
    # once the first has ended, a run with its config gets the folder and finds every stage done
    again = _fve(data_root, features, vlm, 0.001)
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0, err[-2000:]
    assert out.strip().splitlines()[-1] == out1.strip().splitlines()[-1]
