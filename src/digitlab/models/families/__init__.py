"""The model families: one module each, registered in :data:`digitlab.models.FAMILIES` when imported.

Every module here whose name does not start with ``_`` is imported by
``FAMILIES.discover()``; adding a file (and ``conf/architecture/<name>.yaml``)
is all a new family takes.
"""
