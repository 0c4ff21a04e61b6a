"""The trainer every plugin model gets: RecBole's, plus a per-epoch model callback and trainer state
that travels with RecBole's checkpoints."""

import torch
from recbole.trainer import Trainer

from recbole_reveal.compat import load_checkpoint
from recbole_reveal.files import atomic_open

TRAINER_STATE_KEY = "plugin_trainer_state"


class PluginTrainer(Trainer):
    """RecBole's :class:`~recbole.trainer.Trainer` that calls ``model.on_epoch_start(epoch_idx)``
    (when the model defines it) before each training epoch.

    Models use it for state rebuilt once per epoch from their current parameters, such as MISSRec's
    interest clusters; such state should live in registered buffers so that the best checkpoint
    restores it together with the weights.

    A subclass whose training depends on state of its own (AVL's running loss means) returns it from
    ``trainer_state()`` and takes it back in ``load_trainer_state(state)``: it is saved in RecBole's
    checkpoint under ``plugin_trainer_state`` and restored by ``resume_checkpoint``.
    """

    def trainer_state(self):
        return None

    def load_trainer_state(self, state):
        pass

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        super()._save_checkpoint(epoch, verbose=verbose, **kwargs)
        state = self.trainer_state()
        if state is None or (not self.config["single_spec"] and self.config["local_rank"] != 0):
            return
        path = kwargs.get("saved_model_file", self.saved_model_file)
        checkpoint = load_checkpoint(path, map_location="cpu")
        checkpoint[TRAINER_STATE_KEY] = state
        with atomic_open(path, "wb") as f:  # never a half-written checkpoint under the real name
            torch.save(checkpoint, f)       # torch's default pickle protocol: loadable with weights_only=True

    def resume_checkpoint(self, resume_file):
        super().resume_checkpoint(resume_file)
        checkpoint = load_checkpoint(str(resume_file), map_location="cpu")
        self.load_trainer_state(checkpoint.get(TRAINER_STATE_KEY))

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        on_epoch_start = getattr(self.model, "on_epoch_start", None)
        if on_epoch_start is not None:
            on_epoch_start(epoch_idx)
        return super()._train_epoch(train_data, epoch_idx, loss_func=loss_func, show_progress=show_progress)
