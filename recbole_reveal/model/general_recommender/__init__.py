from recbole_reveal.model.general_recommender.vbpr import VBPR
