from recbole_reveal.trainer.trainer import PluginTrainer
from recbole_reveal.trainer.avl import AVLTrainer, ModalityBalance, avl_scale
