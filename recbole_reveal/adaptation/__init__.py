"""RecBole 1.2.1 adapted, in one place: today's stack (``compat.apply()``), its distributed path on CPUs
and GPUs (``ddp.patch_recbole`` in each worker, started by ``launch.Plan``) and the plugin's base trainer
(``trainer.PluginTrainer``: per-epoch model callback, trainer state in checkpoints, optimizer layouts).
Nothing here knows REVEAL, AVL or FVE."""
