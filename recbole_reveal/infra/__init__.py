"""The plugin's infrastructure, light and at the bottom of the house: user errors (``errors``), atomic
writes and locks (``files``), where files are (``locations``), the ``--key=value`` parser (``arguments``),
the per-run cost report (``cost``), what the ranks of a distributed run agree on (``collectives``).
Nothing here imports torch or RecBole when it is imported, nor any other room of the plugin."""
