"""digitlab's Optuna sweeper for Hydra (``hydra/sweeper=digitlab_optuna``): the logic is in :mod:`digitlab.search`.

Hydra instantiates sweepers only from the ``hydra_plugins`` namespace package.
"""
