"""What every FVE stage needs, in one object: the run's config and settings, its folders and file names,
the cost meter, and the shared resources loaded on first use (the item table, the VLM encoder, the
critic's generation backend), so a finished run loads none of them."""

import os
from dataclasses import dataclass, field

from recbole_reveal.config import build_config
from recbole_reveal.fve.config import fve_settings
from recbole_reveal.fve.critic.generation.factory import build_generator
from recbole_reveal.fve.encoding.build import build_fve_encoder
from recbole_reveal.fve.loop.scope import scope_of
from recbole_reveal.fve.prompts.interactions import read_interactions
from recbole_reveal.fve.prompts.records import read_items
from recbole_reveal.fve.prompts.templates import load_templates
from recbole_reveal.fve.vlm.folder import check_vlm_folder, download_hint
from recbole_reveal.infra.cost import CostMeter
from recbole_reveal.infra.errors import ConfigError
from recbole_reveal.training import prepare_run


def run_settings(config):
    """Every ``fve_*`` key of ``config`` with its default (the encoder's, the feedback's, the critic's and
    the generation backend's), each checked once, when the config was built."""
    return fve_settings(config)


@dataclass
class FVEContext:
    model: object                   # model name, class, or "<file.py>:<Class>"
    dataset: str
    config_file_list: list
    config_dict: dict
    cmd_args: tuple
    config: object                  # the RecBole Config the run was built from
    settings: dict                  # every fve_* key (defaults filled in, validated)
    meter: CostMeter = field(default_factory=CostMeter)
    _items: list = None
    _encoder: object = None
    trained: dict = field(default_factory=dict)    # cycle -> (trainer, valid_data) trained by this call
    _generator: object = None
    _interactions: list = None
    _templates: dict = None

    @classmethod
    def build(cls, config):
        """The context of a built config; each cycle's backbone run rebuilds it from the same inputs with
        that cycle's feature set (:meth:`prepare_training`)."""
        model, dataset, config_file_list, config_dict, cmd_args = config.inputs
        settings = run_settings(config)
        from recbole_reveal.fve.loop.stages import training_plan

        training_plan(config, check_port=False)     # --nproc: each cycle's training on N processes (checked here)
        if settings["vlm_path"]:
            check_vlm_folder(settings["vlm_path"])       # before any stage is recorded
        else:
            raise ConfigError("run_fve needs vlm_path: a local VLM folder (Qwen2.5-VL, Qwen3-VL, Gemma-3, "
                              "InternVL3-hf; docs/fve.md). " + download_hint())
        return cls(model, dataset, config_file_list, config_dict, cmd_args, config, settings)

    # ---- folders and files -------------------------------------------------------------------
    @property
    def dataset_dir(self):
        return self.config["data_path"]

    @property
    def feature_dir(self):
        return self.config["feature_dir"] or os.path.join(self.dataset_dir, "features")

    @property
    def fve_dir(self):
        return os.path.join(self.feature_dir, "fve")

    @property
    def run_dir(self):
        return self.settings["fve_run_dir"] or os.path.join(self.fve_dir, "run")

    @property
    def cache_dir(self):
        return self.settings["fve_cache_dir"] or os.path.join(self.fve_dir, "cache")

    def prompts_path(self, x):
        return os.path.join(self.fve_dir, f"prompts_cycle_{x}.jsonl")

    def critic_path(self, x):
        return os.path.join(self.fve_dir, f"critic_cycle_{x}.jsonl")

    def cycle_dir(self, x):
        return os.path.join(self.run_dir, f"cycle_{x}")

    @property
    def scope(self):
        """What ``fve_prompt_scope`` adds to the stages (:mod:`~recbole_reveal.fve.loop.scope`)."""
        return scope_of(self.settings)

    @property
    def keywords_path(self):
        """Interaction scope: each history interaction's review keywords (written by ``init``)."""
        return os.path.join(self.fve_dir, "interaction_keywords.jsonl")

    @property
    def inter_path(self):
        return os.path.join(self.dataset_dir, f"{self.config['dataset']}.inter")

    # ---- shared resources, loaded on first use -----------------------------------------------
    @property
    def items(self):
        if self._items is None:
            self._items = read_items(os.path.join(self.dataset_dir, f"{self.config['dataset']}.item"))
        return self._items

    @property
    def interactions(self):
        """The ``.inter`` rows as :class:`~recbole_reveal.fve.prompts.interactions.Interaction` (token, history flag)."""
        if self._interactions is None:
            self._interactions = read_interactions(self.inter_path, self.settings["fve_interaction_field"])
        return self._interactions

    @property
    def templates(self):
        if self._templates is None:
            self._templates = load_templates(self.settings["fve_templates"])
        return self._templates

    @property
    def encoder(self):
        """The VLM is loaded once per call, on first use (never for a finished run), and shared by the
        encoder and the transformers critic."""
        if self._encoder is None:
            self._encoder = build_fve_encoder(self.settings)
        return self._encoder

    @property
    def generator(self):
        """The critic's generation backend (``fve_generation_backend``); the transformers one shares the
        encoder's VLM."""
        if self._generator is None:
            self._generator = build_generator(self.settings, lambda: self.encoder.vlm)
        return self._generator

    def prepare_training(self, overrides):
        """Config, loaders, model and trainer of a backbone run with ``overrides`` on the run's config."""
        return prepare_run(build_config(self.model, self.dataset, self.config_file_list,
                                        dict(self.config_dict, **overrides), self.cmd_args))
