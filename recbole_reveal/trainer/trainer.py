"""The trainer every plugin model gets: RecBole's, plus a per-epoch model callback."""

from recbole.trainer import Trainer


class PluginTrainer(Trainer):
    """RecBole's :class:`~recbole.trainer.Trainer` that calls ``model.on_epoch_start(epoch_idx)``
    (when the model defines it) before each training epoch.

    Models use it for state rebuilt once per epoch from their current parameters, such as MISSRec's
    interest clusters; such state should live in registered buffers so that the best checkpoint
    restores it together with the weights.
    """

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        on_epoch_start = getattr(self.model, "on_epoch_start", None)
        if on_epoch_start is not None:
            on_epoch_start(epoch_idx)
        return super()._train_epoch(train_data, epoch_idx, loss_func=loss_func, show_progress=show_progress)
