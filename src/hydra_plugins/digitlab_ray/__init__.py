"""digitlab's Ray launcher for Hydra (``hydra/launcher=ray``): the logic is in :mod:`digitlab.raylaunch`.

Hydra instantiates launchers only from the ``hydra_plugins`` namespace package.
"""
