"""The artifact bucket: on ``moto_server`` (a local S3 API, objects in memory) or on an existing S3 endpoint.

moto keeps objects in memory only, so ``stack down`` copies the bucket to
``DIR/s3-snapshot/`` and ``stack up`` puts it back. Credentials for moto are
generated into an AWS shared-credentials file (0600) that processes get through
``AWS_SHARED_CREDENTIALS_FILE``; for an existing endpoint the usual ``AWS_*``
settings of the environment apply.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from digitlab.errors import DigitlabError
from digitlab.io import replace_directory
from digitlab.stack import procs
from digitlab.stack.layout import Layout, ini_text, new_password, read_ini, write_secret

REGION = "us-east-1"


def credentials_env(layout: Layout, external: bool) -> dict[str, str]:
    """The environment a process needs to reach the bucket (for moto: the generated credentials file)."""
    env = {"AWS_DEFAULT_REGION": os.environ.get("AWS_DEFAULT_REGION", REGION)}
    if not external:
        ensure_credentials(layout)
        env["AWS_SHARED_CREDENTIALS_FILE"] = str(layout.aws_credentials)
        env["AWS_PROFILE"] = "default"
    return env


def ensure_credentials(layout: Layout) -> None:
    if not layout.aws_credentials.is_file():
        key = "DL" + new_password()[:18].upper().replace("-", "X").replace("_", "Y")
        write_secret(layout.aws_credentials, ini_text({"default": {"aws_access_key_id": key, "aws_secret_access_key": new_password()}}))


def client(endpoint: str, layout: Layout, external: bool):
    """A boto3 S3 client for ``endpoint`` (moto: with the stack's credentials, read from their file)."""
    import boto3
    from botocore.config import Config

    keys = {}
    if not external:
        section = read_ini(layout.aws_credentials)["default"]
        keys = {"aws_access_key_id": section["aws_access_key_id"], "aws_secret_access_key": section["aws_secret_access_key"]}
    config = Config(connect_timeout=5, read_timeout=60, retries={"max_attempts": 2})
    return boto3.client("s3", endpoint_url=endpoint, region_name=os.environ.get("AWS_DEFAULT_REGION", REGION), config=config, **keys)


def start_moto(layout: Layout, port: int):
    """``moto_server -H 127.0.0.1 -p PORT``, waited for; returns the process."""
    executable = Path(sys.executable).parent / "moto_server"
    if not executable.exists() and not shutil.which("moto_server"):
        raise DigitlabError("moto_server is not installed: pip install 'digitlab[team]' (or give --s3-endpoint URL)")
    command = [str(executable if executable.exists() else shutil.which("moto_server")), "-H", "127.0.0.1", "-p", str(port)]
    log = layout.logs / "s3.log"
    process = procs.spawn(command, log, {**os.environ, **credentials_env(layout, False)}, layout.root)
    url = f"http://127.0.0.1:{port}"
    procs.wait_until(lambda: _answers(url), process, "moto_server (S3)", log, timeout=60)
    return process


def _answers(url: str) -> bool:
    import requests

    try:
        requests.get(f"{url}/moto-api/", timeout=2)
    except requests.RequestException:
        return False
    return True


def ensure_bucket(s3, bucket: str, endpoint: str) -> None:
    """Create ``bucket`` unless it exists; one line naming the endpoint when it can't be reached or used."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        s3.head_bucket(Bucket=bucket)
        return
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket"):
            raise DigitlabError(f"S3 bucket {bucket} at {endpoint}: {error}") from None
    except BotoCoreError as error:
        raise DigitlabError(f"S3 endpoint {endpoint} can't be used: {error}") from None
    try:
        s3.create_bucket(Bucket=bucket)
    except (ClientError, BotoCoreError) as error:
        raise DigitlabError(f"could not create S3 bucket {bucket} at {endpoint}: {error}") from None


def snapshot(s3, bucket: str, layout: Layout) -> int:
    """Copy every object of ``bucket`` into ``DIR/s3-snapshot/`` (swapped in whole); returns how many."""

    def fill(tmp: Path) -> int:
        count = 0
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", []):
                target = tmp / item["Key"]
                if not target.resolve().is_relative_to(tmp.resolve()) or item["Key"].endswith("/"):
                    continue  # a key that would leave the folder, or a "folder" marker
                target.parent.mkdir(parents=True, exist_ok=True)
                s3.download_file(bucket, item["Key"], str(target))
                count += 1
        return count

    return replace_directory(layout.snapshot, fill)


def restore(s3, bucket: str, layout: Layout) -> int:
    """Upload ``DIR/s3-snapshot/`` into ``bucket``; returns how many objects."""
    if not layout.snapshot.is_dir():
        return 0
    files = [path for path in sorted(layout.snapshot.rglob("*")) if path.is_file()]
    for path in files:
        s3.upload_file(str(path), bucket, path.relative_to(layout.snapshot).as_posix())
    return len(files)
