"""The bucket as the project's DVC remote, in ``.dvc/config.local`` (never the committed ``.dvc/config``)."""

from __future__ import annotations

from pathlib import Path

REMOTE = "team"


def configure(project: Path, url: str, endpoint: str | None, credentials: Path | None) -> bool:
    """``dvc remote add --local -d team URL`` plus its endpoint and credentials file; False outside a DVC repo."""
    dvc_dir = project / ".dvc"
    if not dvc_dir.is_dir():
        return False
    from dvc.config import Config

    remote = {"url": url}
    if endpoint:
        remote["endpointurl"] = endpoint
    if credentials:
        remote["credentialpath"] = str(credentials)
    config = Config(dvc_dir=str(dvc_dir), validate=False)
    with config.edit("local") as local:
        local.setdefault("remote", {})[REMOTE] = remote
        local.setdefault("core", {})["remote"] = REMOTE
    return True
