"""The package as a user installs it: a wheel built from this checkout, installed into a fresh virtual
environment outside the checkout, trains a plugin model from another working directory with its
property files (overall, fve, model YAML) applied, and has its commands as console scripts.

Installing torch and RecBole into a fresh environment takes minutes, so the new environment reaches
the test environment's already installed dependencies through a ``.pth`` file. Such a path is added to
``sys.path`` without its own ``.pth`` files being run, so the editable install of this checkout (a
``.pth`` there) is not on the path, and neither is ``PYTHONPATH``: the test asserts that
``recbole_reveal`` is imported from the wheel's copy.
"""

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig

from helpers import write_tiny_dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = ("setup.py", "setup.cfg", "pyproject.toml", "README.md", "recbole_reveal", "properties")

TRAIN = r"""
import json, sys
import recbole_reveal
from recbole_reveal import run_recbole_reveal
from recbole_reveal.infra import locations
from recbole_reveal.infra.errors import DatasetNotFoundError

result = run_recbole_reveal("M3SRec_REVEAL", "tiny", config_dict={
    "data_path": sys.argv[1], "checkpoint_dir": "saved", "epochs": 1, "hidden_size": 16, "inner_size": 32,
    "n_heads": 2, "train_batch_size": 64, "eval_batch_size": 256, "MAX_ITEM_LIST_LENGTH": 10})
config = result["config"]
try:
    run_recbole_reveal("M3SRec", "synthetic-demo")
    demo = "found"
except DatasetNotFoundError as e:
    demo = str(e)
print(json.dumps({
    "package": recbole_reveal.__file__, "properties": locations.properties_dir(),
    "keys": {k: config[k] for k in ("pvn_weight", "avl_alpha", "fve_cycles", "valid_metric", "epochs")},
    "data_path": config["data_path"], "test_metrics": sorted(result["test_result"]), "demo": demo,
}))
"""


def _run(cmd, **kwargs):
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kwargs)
    assert out.returncode == 0, f"{cmd}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


def test_wheel_installed_outside_the_checkout_trains_with_its_properties(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:
        path = os.path.join(REPO, name)
        if os.path.isdir(path):
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy(path, src / name)
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
          "-w", str(tmp_path / "dist"), str(src)])
    wheel, = (tmp_path / "dist").glob("recbole_reveal-*.whl")

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = str(venv / "bin" / "python")
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps", "--no-index",
          str(wheel)])
    purelib = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip()
    deps = sorted({*site.getsitepackages(), sysconfig.get_paths()["purelib"]})
    (venv / purelib / "_test_environment_dependencies.pth").write_text("\n".join(deps) + "\n")

    work = tmp_path / "elsewhere"
    work.mkdir()
    write_tiny_dataset(str(work / "data"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = json.loads(_run([python, "-c", TRAIN, "data"], cwd=work, env=env).strip().splitlines()[-1])
    print(json.dumps(out, indent=1))

    assert out["package"].startswith(purelib) and not out["package"].startswith(REPO)
    assert out["properties"] == os.path.join(purelib, "recbole_reveal", "properties")
    assert out["keys"] == {"pvn_weight": 0.005,        # properties/model/M3SRec.yaml only
                           "avl_alpha": 0.1,           # properties/model/REVEAL.yaml
                           "fve_cycles": 3,            # properties/fve/fve.yaml
                           "valid_metric": "NDCG@20",  # properties/overall.yaml (RecBole's default: MRR@10)
                           "epochs": 1}
    assert out["data_path"] == os.path.join("data", "tiny")
    assert out["test_metrics"] == ["ndcg@10", "ndcg@20", "recall@10", "recall@20"]
    assert "installed recbole-reveal carries no datasets" in out["demo"]
    assert "python -m recbole_reveal.commands.synthetic_data --out dataset_atomic" in out["demo"]
    assert (work / "saved").is_dir()

    # the commands are installed as console scripts
    for command, says in (("run_recbole_reveal", "--model"), ("run_hyper", "--params_file"),
                          ("run_experiments", "variants")):
        assert says in _run([str(venv / "bin" / command), "--help"], cwd=work, env=env)
