"""AVL in RecBole's training loop (``AVLTrainer``, on the plugin's base trainer
:class:`recbole_reveal.adaptation.trainer.PluginTrainer`)."""

from recbole_reveal.trainer.avl import AVLTrainer, ModalityBalance, avl_scale  # noqa: F401
from recbole_reveal.trainer.avl_rules import RULES, make_rule  # noqa: F401
