"""Image classification: a task of the one training engine (:mod:`vimamba.engine`), and inference.

- :mod:`.config`          :class:`ClassificationConfig`, the recipes, and :func:`resolve_config` (engine + task)
- :mod:`.classification`  :class:`ClassificationTask` and :func:`run_training` (``vimamba train``)
- :mod:`.models`          building classifiers (Vim or timm) and loading any classifier checkpoint
- :mod:`.inference`       ``vimamba eval`` / ``vimamba predict``
- :mod:`.commands`        the subcommands; ``vimamba train``'s flags are generated from the two configs
"""
