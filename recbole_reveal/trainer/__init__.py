"""AVL in RecBole's training loop (``AVLTrainer``, on the plugin's base trainer
:class:`recbole_reveal.adaptation.trainer.PluginTrainer`)."""

from recbole_reveal.trainer.avl import AVLTrainer  # noqa: F401
from recbole_reveal.trainer.avl_rules import RULES, PaperRule, avl_scale, make_rule  # noqa: F401
