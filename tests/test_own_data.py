"""A new user's own data and model: the dataset's YAML beside its data, the log of the property files
read, the starter YAML of the feature extractor, and the one-line errors that name the fix (an own
model without its YAML, contract mistakes, --data_path on every entry script)."""

import logging
import os
import re
import subprocess
import sys

import pytest
import torch

from helpers import write_tiny_dataset
from recbole_reveal import build_config, config_report
from recbole_reveal.data.dataset_yaml import longest_history, starter_text, write_starter
from recbole_reveal.infra.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import run_recbole_reveal as script  # noqa: E402

SMALL = {"epochs": 1, "train_batch_size": 64, "eval_batch_size": 256, "stopping_step": 100, "n_heads": 2,
         "inner_size": 32, "MAX_ITEM_LIST_LENGTH": 10}


@pytest.fixture
def own_root(tmp_path):
    """A tiny dataset of one's own, in a folder of its own (its YAML must not leak into other tests)."""
    root = tmp_path / "data"
    write_tiny_dataset(str(root))
    return root


def write_model(folder, name, vision_modules="('vision_projection',)", mask_vision=True):
    """Your own GRU backbone ``<name>`` and ``<name>_REVEAL`` in ``<folder>/<name.lower()>.py`` (the shape of
    examples/custom_backbone/mmgru4rec.py); ``mask_vision=False`` forgets the vision mask."""
    vision = 'self.mask_modality("vision", v)' if mask_vision else "v"
    source = f'''
import torch
from recbole.utils import InputType
from torch import nn

from recbole_reveal.model.abstract_recommender import MultimodalSequentialRecommender
from recbole_reveal.model.reveal import REVEAL


class {name}(MultimodalSequentialRecommender):
    input_type = InputType.POINTWISE
    vision_modules = {vision_modules}

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.hidden_size = config["hidden_size"]
        self.dropout_prob = config["dropout_prob"]
        text = self.item_feature_table(dataset, "text")
        vision = self.item_feature_table(dataset, "vision")
        self.dropout = nn.Dropout(self.dropout_prob)
        self.item_embedding = nn.Embedding(self.n_items, self.hidden_size, padding_idx=0)
        self.text_projection = nn.Linear(text.shape[1], self.hidden_size)
        self.vision_projection = nn.Linear(vision.shape[1], self.hidden_size)
        self.gru = nn.GRU(self.hidden_size, self.hidden_size, batch_first=True)
        self.text_table = nn.Embedding.from_pretrained(text.clone(), freeze=True, padding_idx=0)
        self.vision_table = nn.Embedding.from_pretrained(vision.clone(), freeze=True, padding_idx=0)

    def items(self, ids):
        t = self.mask_modality("text", self.text_projection(self.text_table(ids)))
        v = self.vision_projection(self.vision_table(ids))
        return self.item_embedding(ids) + t + {vision}

    def forward(self, seq, seq_len):
        out, _ = self.gru(self.dropout(self.items(seq)))
        return self.gather_indexes(out, seq_len - 1)

    def all_items(self):
        return self.items(torch.arange(self.n_items))

    def calculate_loss(self, interaction):
        out = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        return nn.functional.cross_entropy(out @ self.all_items().t(), interaction[self.POS_ITEM_ID])

    def predict(self, interaction):
        out = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        return (out * self.items(interaction[self.ITEM_ID])).sum(-1)

    def full_sort_predict(self, interaction):
        return self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]) @ self.all_items().t()


class {name}_REVEAL(REVEAL, {name}):
    pass
'''
    path = folder / f"{name.lower()}.py"
    path.write_text(source)
    return path


def error_lines(text):
    return [line for line in text.splitlines() if line.startswith("error:")]


# ---- the dataset's own YAML ------------------------------------------------------------------------

def test_dataset_yaml_beside_the_data_sets_the_model_size(own_root, tmp_path, caplog):
    from recbole_reveal.training import close_run_logs, prepare_run

    own = own_root / "tiny" / "tiny.yaml"
    own.write_text("hidden_size: 24\nlearning_rate: 0.004\n")
    # data_path comes from the command line here: it is resolved before the dataset's YAML is looked for
    with caplog.at_level(logging.INFO):
        config, _, model, _ = prepare_run(build_config(
            "M3SRec", "tiny", config_dict=dict(SMALL, checkpoint_dir=str(tmp_path)), cmd_args=[f"--data_path={own_root}"]))
    close_run_logs()
    assert config["hidden_size"] == 24 and config["learning_rate"] == 0.004
    assert any(m.weight.shape == (model.n_items, 24) for m in model.modules()     # the model has the dataset's size
               if isinstance(m, torch.nn.Embedding))
    # the run log names every property file read, in precedence order: the model's YAML, then the dataset's
    files = [m.group(1) for r in caplog.records for m in [re.match(r"\s+\d+\. \[[^]]+\] (\S+)", r.getMessage())] if m]
    model_yaml = os.path.join(REPO, "properties", "model", "M3SRec.yaml")
    assert files.index(model_yaml) < files.index(str(own))
    assert "hidden_size = 24 from " + str(own) in caplog.text and "replaces 256 of the model YAML" in caplog.text

    # below --config_files and the command line
    cfg = tmp_path / "sizes.yaml"
    cfg.write_text("hidden_size: 40\n")
    base = dict(SMALL, data_path=str(own_root))
    assert build_config("M3SRec", "tiny", [str(cfg)], base)["hidden_size"] == 40
    assert build_config("M3SRec", "tiny", [str(cfg)], base, ["--hidden_size=8"])["hidden_size"] == 8
    # without the file, the model's own size again
    own.unlink()
    assert build_config("M3SRec", "tiny", config_dict=base)["hidden_size"] == 256


def test_dataset_yaml_may_not_move_the_data(own_root):
    (own_root / "tiny" / "tiny.yaml").write_text("data_path: /elsewhere\n")
    with pytest.raises(ConfigError, match=r"tiny\.yaml: data_path cannot be set in the dataset's own YAML"):
        build_config("M3SRec", "tiny", config_dict={"data_path": str(own_root)})


def test_starter_yaml_fits_the_machine_and_the_histories(own_root, tmp_path):
    inter = own_root / "tiny" / "tiny.inter"
    longest = longest_history(str(inter))
    counts = {}
    for line in inter.read_text().splitlines()[1:]:
        counts[line.split("\t")[0]] = counts.get(line.split("\t")[0], 0) + 1
    assert longest == max(counts.values()) - 1
    path, written = write_starter(str(own_root), "tiny", "cpu", text_feature="text_minilm")
    assert written and path == str(own_root / "tiny" / "tiny.yaml")
    config = build_config("M3SRec", "tiny", config_dict={"data_path": str(own_root)})
    assert (config["hidden_size"], config["inner_size"], config["MAX_ITEM_LIST_LENGTH"]) == (64, 128, longest)
    assert config["text_feature"] == "text_minilm" and config["epochs"] == 40
    # never overwritten
    assert write_starter(str(own_root), "tiny", "gpu") == (path, False)
    # GPU: the models' own sizes
    gpu = starter_text("tiny", "gpu", longest)
    assert "\nhidden_size" not in gpu and f"\nMAX_ITEM_LIST_LENGTH: {longest} " in gpu
    assert "MAX_ITEM_LIST_LENGTH" not in starter_text("tiny", "gpu", 80)   # no model keeps more than 50


def test_extractor_writes_the_starter_yaml_once(own_root, caplog):
    from recbole_reveal.commands.extract_features import main

    folder = own_root / "tiny"
    (folder / "tiny.item").write_text("item_id:token\ttitle:token_seq\n" +
                                      "".join(f"i{i}\tthing_{i}\n" for i in range(40)))
    with caplog.at_level(logging.INFO):
        result = main(["--dataset", "tiny", "--data_path", str(own_root), "--encoder", "minilm",
                       "--name", "text_mine", "--dataset_yaml", "cpu"])
    assert result["dataset_yaml"] == str(folder / "tiny.yaml")
    assert "text_feature: text_mine" in (folder / "tiny.yaml").read_text()
    assert "wrote the starter dataset YAML" in caplog.text and "CPU sizes" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO):
        main(["--dataset", "tiny", "--data_path", str(own_root), "--encoder", "minilm", "--name", "text_other"])
    assert "selects text_feature: text_mine; to train on the set just written, set text_feature: text_other" \
        in caplog.text


def test_extractor_errors_are_one_line(own_root, capsys):
    from recbole_reveal.commands.extract_features import cli

    assert cli(["--dataset", "tiny", "--data_path", str(own_root), "--encoder", "efficientnet-lite0"]) == 2
    err = capsys.readouterr().err
    assert error_lines(err) == [l for l in err.splitlines() if l.strip()] and "tiny.item" in err


# ---- your own model ----------------------------------------------------------------------------------

def test_config_file_replaces_an_own_model_yaml_and_the_log_says_so(own_root, tmp_path):
    model = write_model(tmp_path, "OwnSizeGRU")
    (tmp_path / "OwnSizeGRU.yaml").write_text("hidden_size: 32\ndropout_prob: 0.1\n")
    sizes = tmp_path / "sizes.yaml"
    sizes.write_text("hidden_size: 64\n")
    config = build_config(f"{model}:OwnSizeGRU", "tiny", [str(sizes)], {"data_path": str(own_root)})
    assert config["hidden_size"] == 64          # RecBole's order: config files above every model YAML
    notes = [line for _, line in config_report.report(config) if line.startswith("hidden_size")]
    assert notes == [f"hidden_size = 64 from {sizes} (--config_files) replaces 32 of the model YAML "
                     f"{tmp_path / 'OwnSizeGRU.yaml'}: RecBole's order (model YAML < dataset YAML < --config_files "
                     f"< config_dict < command line); remove it from {sizes} to keep the model's value"]


def test_own_model_without_its_yaml_names_the_file_and_the_first_missing_key(own_root, tmp_path, capsys, caplog):
    model = write_model(tmp_path, "OwnBareGRU")
    (tmp_path / "ownbaregru.yaml").write_text("hidden_size: 32\n")        # misnamed: not <Class>.yaml
    with caplog.at_level(logging.WARNING):
        code = script.main([f"--model={model}:OwnBareGRU_REVEAL", "--dataset=tiny", f"--data_path={own_root}",
                            f"--checkpoint_dir={tmp_path / 'saved'}", "--epochs=1"])
    out = capsys.readouterr()
    assert code == 2
    assert error_lines(out.err) == [
        f"error: OwnBareGRU_REVEAL reads the config key 'hidden_size', which is not set (nor dropout_prob): set it in "
        f"{tmp_path / 'OwnBareGRU.yaml'} (not found: it is read when it lies beside the model's file) or pass "
        "--hidden_size=VALUE (building the model failed with " + error_lines(out.err)[0].split("failed with ")[1]]
    # the run log warned first, naming the files looked for and the misnamed one
    assert f"looked for {tmp_path / 'OwnBareGRU.yaml'} and {tmp_path / 'OwnBareGRU_REVEAL.yaml'}" in caplog.text
    assert "YAML files there: ownbaregru.yaml (the name must be <Class>.yaml" in caplog.text


@pytest.mark.parametrize("mistake, expected", [
    ({"vision_modules": "('vision_proj',)"},
     "OwnTypoGRU_REVEAL.vision_modules names 'vision_proj', which is not a sub-module (did you mean "
     "'vision_projection'?); its sub-modules with parameters: "),
    ({"mask_vision": False},
     "OwnMaskGRU_REVEAL never passed 'vision' through mask_modality while it was zeroed (it did pass 'text'): "
     "call self.mask_modality('vision', projected)"),
])
def test_contract_mistakes_are_one_line_errors(own_root, tmp_path, capsys, mistake, expected):
    name = "OwnTypoGRU" if "vision_modules" in mistake else "OwnMaskGRU"
    model = write_model(tmp_path, name, **mistake)
    (tmp_path / f"{name}.yaml").write_text("hidden_size: 16\ndropout_prob: 0.1\n")
    code = script.main([f"--model={model}:{name}_REVEAL", "--dataset=tiny", f"--data_path={own_root}",
                        f"--checkpoint_dir={tmp_path / 'saved'}", "--epochs=1", "--MAX_ITEM_LIST_LENGTH=10"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert len(error_lines(err)) == 1 and error_lines(err)[0].startswith("error: " + expected)


def test_mask_modality_only_knows_text_and_vision(tiny_config):
    from helpers import build_pipeline

    from recbole_reveal.infra.errors import ModelContractError
    from recbole_reveal.training import close_run_logs

    _, _, model, _ = build_pipeline("M3SRec", dict(tiny_config, epochs=1))
    close_run_logs()
    with pytest.raises(ModelContractError, match=r"M3SRec calls mask_modality\('image', \.\.\.\): the modality "
                                                 r"must be one of text, vision"):
        model.mask_modality("image", torch.zeros(2, 3))


# ---- the entry scripts -------------------------------------------------------------------------------

def test_run_hyper_and_run_experiments_take_data_path_and_log_plainly(own_root, tmp_path):
    """--data_path on both commands; a redirected log has no colour codes and no RecBole FutureWarning."""
    params = tmp_path / "lr.hyper"
    params.write_text("learning_rate choice [0.001]\n")
    small = [f"--{k}={v}" for k, v in dict(SMALL, hidden_size=16).items()]
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    out = subprocess.run(
        [sys.executable, os.path.join(REPO, "run_hyper.py"), "--model=M3SRec", "--dataset=tiny", "--data_path",
         str(own_root), f"--params_file={params}", f"--output_file={tmp_path / 'hyper.result'}",
         f"--checkpoint_dir={tmp_path / 'saved'}", *small],
        capture_output=True, text=True, timeout=600, cwd=str(tmp_path), env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    both = out.stdout + out.stderr
    assert "\x1b[" not in both
    assert "FutureWarning" not in both
    assert "best params:" in out.stdout

    sets = [f"{k}={v}" for k, v in dict(SMALL, hidden_size=16).items()]
    out = subprocess.run(
        [sys.executable, os.path.join(REPO, "run_experiments.py"), "seeds", "--dataset", "tiny", "--data_path",
         str(own_root), "--models", "M3SRec", "--n_seeds", "1", "--out", str(tmp_path / "results"), "--set", *sets],
        capture_output=True, text=True, timeout=600, cwd=str(tmp_path), env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "test recall@20" in out.stdout and "\x1b[" not in out.stdout + out.stderr


def test_python_m_commands_print_no_runpy_warning(own_root):
    for module in ("recbole_reveal.commands.fve_prompts", "recbole_reveal.commands.extract_features", "recbole_reveal.commands.synthetic_data"):
        out = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=300,
                             env=dict(os.environ, PYTHONPATH=REPO))
        assert out.returncode == 0 and "RuntimeWarning" not in out.stderr, (module, out.stderr)


def test_recbole_future_warnings_are_hidden_only_where_recbole_raises_them():
    import warnings

    from recbole_reveal.adaptation import compat

    compat.apply()
    message = "A value is trying to be set on a copy of a DataFrame or Series through chained assignment"
    with warnings.catch_warnings(record=True) as caught:
        for module in ("recbole.data.dataset.dataset", "my_own_code"):
            warnings.warn_explicit(message, FutureWarning, "x.py", 1, module=module, registry={})
    assert [w.filename for w in caught] == ["x.py"] and len(caught) == 1


def test_fve_console_handler_prints_between_trainings_only():
    import io

    from recbole_reveal.commands.console import show_fve_progress

    for h in list(logging.getLogger("recbole_reveal.fve").handlers):   # an earlier command's, in this process
        if getattr(h, "recbole_reveal_console", False):
            logging.getLogger("recbole_reveal.fve").removeHandler(h)
    stream = io.StringIO()
    show_fve_progress(stream)
    fve = logging.getLogger("recbole_reveal.fve.loop.stages")
    level = logging.getLogger("recbole_reveal.fve").level
    logging.getLogger("recbole_reveal.fve").setLevel(logging.INFO)
    root = logging.getLogger()
    try:
        saved = list(root.handlers)         # pytest's own capture handlers are stream handlers too
        for h in saved:
            root.removeHandler(h)
        fve.info("FVE cycle 0 critic: 1 accepted, 5 kept the old prompt")
        recbole_console = logging.StreamHandler(io.StringIO())
        root.addHandler(recbole_console)              # a training: RecBole's console prints FVE's records
        fve.info("during training")
        root.removeHandler(recbole_console)
        for h in saved:
            root.addHandler(h)
    finally:
        logging.getLogger("recbole_reveal.fve").setLevel(level)
        for h in list(logging.getLogger("recbole_reveal.fve").handlers):
            if getattr(h, "recbole_reveal_console", False):
                logging.getLogger("recbole_reveal.fve").removeHandler(h)
    assert "FVE cycle 0 critic: 1 accepted, 5 kept the old prompt" in stream.getvalue()
    assert "during training" not in stream.getvalue()


def test_fve_run_prints_the_critic_counts_of_each_cycle_on_the_console(tmp_path):
    """The FVE loop through the entry script with the tiny random VLM (its answers are never well formed):
    the critic's counts reach the console, not only fve.log."""
    import numpy as np

    from recbole_reveal.data.feature_store import save_item_features
    from recbole_reveal.data.synthetic import generate_dataset
    from recbole_reveal.testing.vlms import build_tiny_qwen2_5_vl

    root = tmp_path / "data"
    generate_dataset(str(root), "fvecli", n_users=40, n_items=24, seed=3, image_size=64)
    tokens = [line.split("\t")[0] for line in (root / "fvecli" / "fvecli.item").read_text().splitlines()[1:]]
    save_item_features(str(root / "fvecli" / "features"), "text_minilm", tokens,
                       np.random.default_rng(0).normal(size=(len(tokens), 8)).astype(np.float32))
    vlm = build_tiny_qwen2_5_vl(str(tmp_path / "vlm"))
    settings = dict(SMALL, hidden_size=16, fve_cycles=2, fve_device="cpu", fve_preprocess_workers=0,
                    fve_rewrite_max_new_tokens=8, fve_rewrite_fraction=0.25, vlm_path=vlm,
                    checkpoint_dir=tmp_path / "saved", data_path=root)
    out = subprocess.run([sys.executable, os.path.join(REPO, "run_recbole_reveal.py"), "--model=M3SRec_REVEAL",
                          "--dataset=fvecli", *[f"--{k}={v}" for k, v in settings.items()]],
                         capture_output=True, text=True, timeout=600, cwd=str(tmp_path),
                         env=dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1"))
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(l for l in out.stderr.splitlines() if "FVE cycle 0 critic:" in l and "kept the old prompt" in l)
    assert re.search(r"FVE cycle 0 critic: 0 accepted, 6 kept the old prompt \(6 answers rejected, 0 items "
                     r"without a usable image\)", line), line


def test_write_atomic_makes_files_recbole_and_the_extractor_read(tmp_path):
    from recbole_reveal.data.atomic import read_atomic, write_atomic

    path = write_atomic(str(tmp_path / "d" / "d.item"), {
        "item_id:token": ["a", "b"], "title:token_seq": ["Red\tmug", None],
        "categories:token_seq": [["Home Kitchen", "Mugs"], []], "price:float": [1.5, float("nan")],
        "review:token": ['Great "mug"\nwould buy', ""]})
    columns, types, rows = read_atomic(path)
    assert columns == ["item_id", "title", "categories", "price", "review"]
    assert types == ["token", "token_seq", "token_seq", "float", "token"]
    assert rows == [["a", "Red mug", "Home_Kitchen Mugs", "1.5", 'Great "mug" would buy'], ["b", "", "", "", ""]]
    with pytest.raises(ValueError, match=r"column 'title' must be 'name:type'"):
        write_atomic(str(tmp_path / "x.item"), {"title": ["a"]})
    with pytest.raises(ValueError, match="columns of different lengths"):
        write_atomic(str(tmp_path / "x.item"), {"a:token": [1], "b:token": [1, 2]})
