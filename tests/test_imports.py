"""The light modules load neither torch nor RecBole (a DDP rank, an encoding worker or a command's
``--help`` does not pay their seconds and hundreds of MB); the public API still makes RecBole work on
today's stack, on first use."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

LIGHT = [
    "recbole_reveal",
    "recbole_reveal.infra.errors",
    "recbole_reveal.infra.files",
    "recbole_reveal.config_keys.check",
    "recbole_reveal.config_keys.known",
    "recbole_reveal.infra.collectives",
    "recbole_reveal.adaptation.launch",
    "recbole_reveal.commands.prepare_data",
    "recbole_reveal.commands.synthetic_data",
    "recbole_reveal.infra.arguments",
    "recbole_reveal.infra.locations",
    "recbole_reveal.infra.cost",
    "recbole_reveal.data.atomic",
    "recbole_reveal.data.feature_store",
    "recbole_reveal.data.synthetic",
    "recbole_reveal.prepare",
    "recbole_reveal.data.merge",
    "recbole_reveal.commands.merge_datasets",
    "recbole_reveal.fve",
    "recbole_reveal.fve.config",
    "recbole_reveal.fve.prompts.keywords",
    "recbole_reveal.fve.prompts.templates",
    "recbole_reveal.fve.prompts.records",
    "recbole_reveal.commands.fve_prompts",
    "recbole_reveal.fve.encoding.images",
    "recbole_reveal.fve.encoding.cache.embeddings",
    "recbole_reveal.fve.encoding.cache.digests",
    "recbole_reveal.fve.critic.generation.base",
    "recbole_reveal.fve.vlm.folder",
    "recbole_reveal.fve.critic.rewrite_parser",
    "recbole_reveal.fve.vlm.families",
    "recbole_reveal.fve.prompts.interactions",
    "recbole_reveal.data.interaction_tokens",
    "recbole_reveal.data.dataset_yaml",
    "recbole_reveal.data.availability",
    "recbole_reveal.commands.mark_missing",
    "recbole_reveal.experiments.degradation",
    "recbole_reveal.testing.vlms",
    "recbole_reveal.commands.run_recbole_reveal",
    "recbole_reveal.commands.run_hyper",
    "recbole_reveal.commands.run_experiments",
    "recbole_reveal.experiments.runs",
    "recbole_reveal.experiments.protocols",
    "recbole_reveal.experiments.tables",
]
HEAVY = ("torch", "recbole")


def imported_modules(statement):
    """Top-level names of every module ``python -X importtime -c statement`` imported."""
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", statement],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    names = set()
    for line in out.stderr.splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    assert "recbole_reveal" in names
    return names


@pytest.mark.parametrize("module", LIGHT)
def test_light_module_imports_neither_torch_nor_recbole(module):
    heavy = imported_modules(f"import {module}") & set(HEAVY)
    assert not heavy, f"importing {module} loads {sorted(heavy)}"


def test_entry_scripts_parse_their_command_line_without_torch():
    code = (f"import sys; sys.path.insert(0, {REPO!r}); import run_recbole_reveal, run_hyper; "
            "run_recbole_reveal.parse_args(['--model=M3SRec', '--dataset=d', '--epochs=3']); "
            "run_hyper.split_args(['--model=M3SRec', '--dataset=d', '--params_file=p', '--epochs=3'])")
    assert not imported_modules(code) & set(HEAVY)


def test_the_api_applies_the_recbole_fixes_on_first_use():
    code = ("import recbole_reveal, sys; assert 'torch' not in sys.modules; "
            "recbole_reveal.build_config; import numpy, torch; "
            "print(hasattr(numpy, 'float_'), torch.is_anomaly_enabled())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["True", "False"]


def test_the_import_contracts_hold():
    """``lint-imports`` with setup.cfg's contracts (the floors of docs/design.md, backbones that import no
    other backbone, nothing in the library importing ``recbole_reveal.testing``): an import that runs
    back up fails here, as in CI (README's test command runs it first)."""
    code = ("import sys; from importlinter.cli import lint_imports_command; "
            "sys.argv = ['lint-imports', '--no-cache']; sys.exit(lint_imports_command())")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PYTHONPATH=REPO))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout


def test_every_name_of_the_fve_api_resolves():
    """``recbole_reveal.fve`` hands its public names on, imported on first use: each must still live in
    the module its table names (sub-packages move)."""
    import recbole_reveal.fve as fve

    missing = []
    for name in fve.__all__:
        try:
            getattr(fve, name)
        except AttributeError as e:
            missing.append(f"{name}: {e}")
    assert not missing
