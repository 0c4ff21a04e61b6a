from recbole_reveal import compat

compat.apply()

from recbole_reveal.trainer.trainer import PluginTrainer  # noqa: E402
from recbole_reveal.trainer.avl import AVLTrainer, ModalityBalance, avl_scale  # noqa: E402
from recbole_reveal.trainer.avl_rules import RULES, make_rule  # noqa: E402
