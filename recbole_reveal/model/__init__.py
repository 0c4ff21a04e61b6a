"""The plugin's RecBole models (one module per model, RecBole's layout). RecBole is made to work on
today's stack before any model module imports it."""

from recbole_reveal.adaptation import compat

compat.apply()
