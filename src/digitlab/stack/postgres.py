"""PostgreSQL for MLflow's backend store: a cluster of the stack's own, or an existing server.

The local cluster (``DIR/postgres``) listens on 127.0.0.1 only; TCP logins need a
password (scram-sha-256); the Unix socket lives in the data directory (0700), so only
the cluster's owner (and root) can use the ``trust`` login that sets up the ``mlflow``
role. initdb and postgres refuse to run as root: then they run as the user ``postgres``
(``runuser``), which owns the data directory. The ``mlflow`` role's password is in a
pgpass file (0600), which the MLflow server reads through ``PGPASSFILE``.
"""

from __future__ import annotations

import dataclasses
import os
import pwd
import shlex
import shutil
import subprocess
from pathlib import Path
from urllib.parse import unquote, urlsplit

from digitlab.errors import DigitlabError
from digitlab.stack.layout import Layout, new_password, write_secret

SUPERUSER = "postgres"
ROLE = DATABASE = "mlflow"
STUDIES = "optuna"  # the database of the team's Optuna studies (digitlab.search), owned by the same role
RUN_AS = "postgres"  # the unprivileged user that runs the cluster when digitlab runs as root
_SOCKET_NAME_LENGTH = len("/.s.PGSQL.65535")


@dataclasses.dataclass(frozen=True)
class Database:
    """Where the MLflow server's store is: no password here (it is in the pgpass file)."""

    host: str
    port: int
    user: str
    name: str
    passfile: Path | None = None  # the pgpass file holding the password (None: the user's own ~/.pgpass)

    @property
    def uri(self) -> str:
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{self.name}"

    def sibling(self, name: str) -> str:
        """The URI of another database of the same server and role."""
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{name}"


def bindir() -> Path:
    """The newest installed PostgreSQL's binaries (Debian: /usr/lib/postgresql/<version>/bin), else those on PATH."""
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: _version(p.parent.parent.name))
    if versions:
        return versions[-1].parent
    found = shutil.which("pg_ctl") or _pg_config_bindir()
    if found:
        return Path(found).parent if found.endswith("pg_ctl") else Path(found)
    raise DigitlabError(
        "PostgreSQL is not installed (no initdb/pg_ctl in /usr/lib/postgresql/*/bin or on PATH): "
        "install it (apt-get install postgresql) or use an existing server with --database-url postgresql://..."
    )


def _version(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.split(".") if part.isdigit())


def _pg_config_bindir() -> str | None:
    pg_config = shutil.which("pg_config")
    if not pg_config:
        return None
    result = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
    directory = result.stdout.strip()
    return directory if result.returncode == 0 and (Path(directory) / "pg_ctl").exists() else None


def as_cluster_user(command: list[str]) -> list[str]:
    """``command`` run as the cluster's owner: ourselves, or ``postgres`` (runuser) when we are root."""
    return ["runuser", "-u", RUN_AS, "--", *command] if os.geteuid() == 0 else command


def _run(command: list[str], what: str, timeout: float = 120) -> str:
    result = subprocess.run(as_cluster_user(command), capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        output = (result.stderr.strip() or result.stdout.strip()).splitlines()
        raise DigitlabError(f"{what} failed: {output[-1] if output else f'exit status {result.returncode}'}")
    return result.stdout


def prepare_directory(layout: Layout) -> None:
    """Create the data directory, owned by the cluster's user, and check that user can reach it."""
    data = layout.postgres
    if len(str(data)) + _SOCKET_NAME_LENGTH > 107:
        raise DigitlabError(f"--dir={str(layout.root)!r} is too long for PostgreSQL's socket path: choose a shorter --dir")
    data.mkdir(mode=0o700, exist_ok=True)
    if os.geteuid() != 0:
        return
    try:
        owner = pwd.getpwnam(RUN_AS)
    except KeyError:
        raise DigitlabError(
            f"PostgreSQL refuses to run as root and there is no user {RUN_AS!r} to run it: "
            "create one (apt-get install postgresql does) or run digitlab stack as another user"
        ) from None
    if data.stat().st_uid != owner.pw_uid:
        for path in (data, *(p for p in data.rglob("*") if not p.is_symlink())):
            os.chown(path, owner.pw_uid, owner.pw_gid)
    if subprocess.run(["runuser", "-u", RUN_AS, "--", "test", "-w", str(data)], check=False).returncode != 0:
        raise DigitlabError(
            f"the stack directory {layout.root} is not reachable by the user {RUN_AS!r}, which runs PostgreSQL "
            "when digitlab runs as root: choose a --dir whose parent folders others may enter (chmod o+x), e.g. under /srv or /tmp"
        )


def init_cluster(layout: Layout) -> bool:
    """initdb the cluster unless it exists; True when it was created now."""
    if (layout.postgres / "PG_VERSION").is_file():
        return False
    prepare_directory(layout)
    _run(
        [str(bindir() / "initdb"), "-D", str(layout.postgres), "-U", SUPERUSER, "-E", "UTF8", "--locale=C",
         "--auth-local=trust", "--auth-host=scram-sha-256", "--no-instructions"],
        "initdb",
    )  # fmt: skip
    return True


def postmaster_pid(layout: Layout) -> int | None:
    """The pid in the cluster's postmaster.pid (first line), or None when there is none."""
    try:
        return int((layout.postgres / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None


def start(layout: Layout, port: int) -> None:
    """pg_ctl start: listen on 127.0.0.1:``port`` only, the socket in the data directory; wait until it accepts logins."""
    prepare_directory(layout)
    log = layout.logs / "postgres.log"
    log.touch()
    if os.geteuid() == 0:
        owner = pwd.getpwnam(RUN_AS)
        os.chown(log, owner.pw_uid, owner.pw_gid)
    socket_dir = shlex.quote(str(layout.postgres))
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {socket_dir} -c password_encryption=scram-sha-256"
    command = [str(bindir() / "pg_ctl"), "start", "-D", str(layout.postgres), "-l", str(log), "-w", "-t", "60", "-o", options]
    try:
        _run(command, "pg_ctl start")
    except DigitlabError as error:
        raise DigitlabError(f"{error} (log: {log})") from None


def stop(layout: Layout) -> None:
    """pg_ctl stop -m fast (waits), when the cluster is running."""
    if (layout.postgres / "postmaster.pid").is_file():
        _run([str(bindir() / "pg_ctl"), "stop", "-D", str(layout.postgres), "-m", "fast", "-w", "-t", "60"], "pg_ctl stop")


def ensure_role(layout: Layout, port: int) -> Database:
    """The role and database ``mlflow``, its password (the pgpass file's, else a new one) set as a SCRAM verifier."""
    import psycopg
    from psycopg import sql

    password = pgpass_password(layout.pgpass) or new_password()
    with psycopg.connect(host=str(layout.postgres), port=port, user=SUPERUSER, dbname="postgres", autocommit=True,
                         connect_timeout=10) as conn:  # fmt: skip
        verifier = conn.pgconn.encrypt_password(password.encode(), ROLE.encode(), b"scram-sha-256").decode()
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (ROLE,)).fetchone()
        verb = "ALTER" if exists else "CREATE"
        conn.execute(sql.SQL(verb + " ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(ROLE), sql.Literal(verifier)))
        for name in (DATABASE, STUDIES):
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
                conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(ROLE)))
    write_secret(layout.pgpass, pgpass_line("127.0.0.1", "*", "*", ROLE, password))
    return Database("127.0.0.1", port, ROLE, DATABASE, layout.pgpass)


def pgpass_line(host: str, port: int | str, database: str, user: str, password: str) -> str:
    def escape(value: str) -> str:
        return value.replace("\\", "\\\\").replace(":", "\\:")

    return ":".join(escape(str(part)) for part in (host, port, database, user, password)) + "\n"


def pgpass_password(path: Path) -> str | None:
    """The password of the first line of a pgpass file digitlab wrote, or None."""
    try:
        line = path.read_text(encoding="utf-8").splitlines()[0]
    except (OSError, IndexError):
        return None
    fields, current, escaped = [], "", False
    for char in line:
        if escaped:
            current, escaped = current + char, False
        elif char == "\\":
            escaped = True
        elif char == ":":
            fields, current = [*fields, current], ""
        else:
            current += char
    return current if len(fields) == 4 else None


def external(layout: Layout, url: str) -> Database:
    """An existing server (``--database-url``), its login checked; a password in the URL then moves to a pgpass file."""
    parts = urlsplit(url)
    host, port, user, name = parts.hostname or "127.0.0.1", parts.port or 5432, unquote(parts.username or ""), parts.path.lstrip("/")
    password = unquote(parts.password) if parts.password is not None else None
    passfile = layout.secrets / "pgpass-external"
    database = Database(host, port, user, name, passfile if password is not None or passfile.is_file() else None)
    check_login(database, password)  # before the file changes: a running server may read it
    if password is not None:
        write_secret(passfile, pgpass_line(host, port, name, user, password))
    return database


def check_login(database: Database, password: str | None = None) -> None:
    """Log in as the MLflow server will; one line naming the server (never the password) if that fails."""
    import psycopg

    secret = {"password": password} if password is not None else {"passfile": str(database.passfile)} if database.passfile else {}
    try:
        psycopg.connect(host=database.host, port=database.port, user=database.user, dbname=database.name,
                        connect_timeout=10, **secret).close()  # fmt: skip
    except psycopg.Error as error:
        detail = " ".join(str(error).split())[:300]
        raise DigitlabError(f"PostgreSQL {database.uri} refused the login: {detail}") from None
