"""digitlab's team stack: one command starts, stops and reports a shared MLflow set-up.

``digitlab stack up|down|status [--dir DIR]`` runs, on this machine:

- PostgreSQL (MLflow's backend store): a cluster of its own in ``DIR/postgres``
  (:mod:`.postgres`), or an existing server (``--database-url``);
- an S3 server (``moto_server``, :mod:`.s3`) holding the artifact bucket, also the DVC remote,
  or an existing one (``--s3-endpoint``);
- ``mlflow server`` with basic auth (:mod:`.server`), artifacts proxied to the bucket.

Everything lives in DIR (default ``<project>/.digitlab/stack``): data, logs, the
generated secrets (files only their owner can read, never on a command line) and
``state.json`` (pids, ports, addresses; no secret). :mod:`.client` lets a tracking
client of this machine find the stack's credentials.
"""

from __future__ import annotations

DEFAULT_PORT = 5151  # conf/tracking/team.yaml points here
DEFAULT_BUCKET = "digitlab"
STACK_DIR_ENV = "DIGITLAB_STACK_DIR"
