"""The trainer every plugin model gets: RecBole's, plus a per-epoch model callback and trainer state
that travels with RecBole's checkpoints."""

from recbole_reveal.adaptation import compat

compat.apply()

import torch  # noqa: E402
from recbole.trainer import Trainer  # noqa: E402
from recbole.utils import set_color  # noqa: E402

from recbole_reveal.adaptation.compat import load_checkpoint  # noqa: E402
from recbole_reveal.infra.errors import ConfigError  # noqa: E402
from recbole_reveal.infra.files import atomic_open  # noqa: E402

TRAINER_STATE_KEY = "plugin_trainer_state"


class PluginTrainer(Trainer):
    """RecBole's :class:`~recbole.trainer.Trainer` that calls ``model.on_epoch_start(epoch_idx)``
    (when the model defines it) before each training epoch.

    Models use it for state rebuilt once per epoch from their current parameters, such as MISSRec's
    interest clusters; such state should live in registered buffers so that the best checkpoint
    restores it together with the weights.

    A subclass whose training depends on state of its own (AVL's running loss means) returns it from
    ``trainer_state()`` and takes it back in ``load_trainer_state(state)``: it is saved in RecBole's
    checkpoint under ``plugin_trainer_state`` and restored by ``resume_checkpoint``. A subclass whose
    optimizer groups differ from RecBole's single group describes them in ``optimizer_layout()`` and
    ``layout_of_saved_optimizer(saved)``, so that a checkpoint of the other layout resumes.
    """

    def trainer_state(self):
        return None

    def load_trainer_state(self, state):
        pass

    def optimizer_layout(self):
        """This trainer's optimizer parameter groups (``[{"params": [...]}, ...]``), in order."""
        return [{"params": list(self.model.parameters())}]

    def layout_of_saved_optimizer(self, saved):
        """The parameter groups, in this model's parameters, that the optimizer state ``saved`` was made
        with (the same architecture, another trainer setting)."""
        return [{"params": list(self.model.parameters())}]

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        """RecBole's checkpoint plus ``trainer_state()``, written once, under a unique temporary name
        renamed over the real one: never a half-written checkpoint, also when several machines of a
        distributed run write the same file."""
        if not self.config["single_spec"] and self.config["local_rank"] != 0:
            return
        saved_model_file = kwargs.pop("saved_model_file", self.saved_model_file)
        state = {
            "config": self.config,
            "epoch": epoch,
            "cur_step": self.cur_step,
            "best_valid_score": self.best_valid_score,
            "state_dict": self.model.state_dict(),
            "other_parameter": self.model.other_parameter(),
            "optimizer": self.optimizer.state_dict(),
        }
        trainer_state = self.trainer_state()
        if trainer_state is not None:
            state[TRAINER_STATE_KEY] = trainer_state
        with atomic_open(saved_model_file, "wb") as f:      # never a half-written checkpoint under the real name
            torch.save(state, f)    # torch's default pickle protocol: loadable with weights_only=True
        if verbose:
            self.logger.info(set_color("Saving current", "blue") + f": {saved_model_file}")

    def resume_checkpoint(self, resume_file):
        """RecBole's ``resume_checkpoint``, plus the trainer state, and an optimizer state made with the
        other parameter-group layout (e.g. an ``avl=False`` checkpoint resumed with AVL) mapped onto
        this trainer's groups parameter by parameter."""
        resume_file = str(resume_file)
        self.saved_model_file = resume_file
        checkpoint = load_checkpoint(resume_file, map_location=self.device)
        self.start_epoch = checkpoint["epoch"] + 1
        self.cur_step = checkpoint["cur_step"]
        self.best_valid_score = checkpoint["best_valid_score"]
        if checkpoint["config"]["model"].lower() != self.config["model"].lower():
            self.logger.warning(
                f"the checkpoint {resume_file} is of {checkpoint['config']['model']}, not {self.config['model']}: "
                "loading its parameters may fail")
        self.model.load_state_dict(checkpoint["state_dict"])
        self.model.load_other_parameter(checkpoint.get("other_parameter"))
        self.optimizer.load_state_dict(self._adapt_optimizer_state(checkpoint["optimizer"], resume_file))
        self.load_trainer_state(checkpoint.get(TRAINER_STATE_KEY))
        self.logger.info(f"Checkpoint loaded. Resume training from epoch {self.start_epoch}")

    def _adapt_optimizer_state(self, saved, resume_file):
        target = self.optimizer_layout()
        if [len(g["params"]) for g in saved["param_groups"]] == [len(g["params"]) for g in target] and \
                len(saved["param_groups"]) == len(target):
            return saved
        source = self.layout_of_saved_optimizer(saved)
        if [len(g["params"]) for g in source] != [len(g["params"]) for g in saved["param_groups"]]:
            raise ConfigError(
                f"{resume_file}: its optimizer has parameter groups of sizes "
                f"{[len(g['params']) for g in saved['param_groups']]}, which match neither this run's "
                f"{[len(g['params']) for g in target]} nor a known layout: was it made by another model?")
        position = {}                          # parameter -> index in the saved state
        for group, saved_group in zip(source, saved["param_groups"]):
            for p, index in zip(group["params"], saved_group["params"]):
                position[id(p)] = index
        markers = {k for g in source + target for k in g if k != "params"}     # what names a group, not a setting
        hyper = {k: v for k, v in saved["param_groups"][0].items() if k != "params" and k not in markers}
        state, groups, n = {}, [], 0
        for group in target:
            indices = []
            for p in group["params"]:
                if position[id(p)] in saved["state"]:
                    state[n] = saved["state"][position[id(p)]]
                indices.append(n)
                n += 1
            groups.append(dict(hyper, params=indices, **{k: v for k, v in group.items() if k != "params"}))
        self.logger.info(f"{resume_file}: optimizer state mapped from {len(source)} parameter group(s) onto "
                         f"this run's {len(target)}")
        return {"state": state, "param_groups": groups}

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        on_epoch_start = getattr(self.model, "on_epoch_start", None)
        if on_epoch_start is not None:
            on_epoch_start(epoch_idx)
        return super()._train_epoch(train_data, epoch_idx, loss_func=loss_func, show_progress=show_progress)
