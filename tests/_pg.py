"""A private PostgreSQL server for tests, started on 127.0.0.1 and stopped after the session.

A test module uses the fixtures by assignment (``import _pg`` then ``postgres_server =
_pg.postgres_server`` and ``postgres_url = _pg.postgres_url``), so linters see no redefinition.

* ``postgres_server`` (session): ``initdb`` into a fresh folder, ``pg_ctl start`` on a free port
  listening on 127.0.0.1 only (trust authentication, no fsync), ``pg_ctl stop -m fast`` and removal
  of the folder at the end. One server per test session, however many modules use it.
* ``postgres_url`` (function): a new empty database on that server, as a
  ``postgresql+psycopg2://postgres@127.0.0.1:PORT/DB`` URL.

Server binaries are looked up in ``$NASDISTILL_PG_BIN``, then ``/usr/lib/postgresql/<newest>/bin``,
then ``PATH``. Without them (or without psycopg2) the tests are skipped with the reason, or fail
when ``NASDISTILL_REQUIRE_DATA=1`` (as ``.ci/run`` sets), like the data fixtures of conftest.py.
Run as root, the server runs as the ``postgres`` user (PostgreSQL refuses to run as root).
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

_server: dict | None = None
_users = 0
_db_names = itertools.count()


def _skip_or_fail(msg: str):
    if os.environ.get("NASDISTILL_REQUIRE_DATA") == "1":
        pytest.fail(msg + " and NASDISTILL_REQUIRE_DATA=1 forbids skipping", pytrace=False)
    pytest.skip(msg)


def pg_bin() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl``, or None."""
    env = os.environ.get("NASDISTILL_PG_BIN")
    candidates = [env] if env else []
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name)
                         if Path(p).parent.name.isdigit() else 0, reverse=True)
    which = shutil.which("initdb")
    if which:
        candidates.append(str(Path(which).parent))
    for c in candidates:
        if c and (Path(c) / "initdb").is_file() and (Path(c) / "pg_ctl").is_file():
            return Path(c)
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_server_user() -> tuple[list[str], tuple[int, int] | None]:
    """Command prefix and (uid, gid) to own the data folder: ``postgres`` when running as root."""
    if os.geteuid() != 0:
        return [], None
    try:
        pw = pwd.getpwnam("postgres")
    except KeyError:
        _skip_or_fail("running as root and there is no 'postgres' user to run the PostgreSQL server")
    runuser = shutil.which("runuser")
    if runuser is None:
        _skip_or_fail("running as root and 'runuser' is missing, so the PostgreSQL server cannot drop root")
    return [runuser, "-u", "postgres", "--"], (pw.pw_uid, pw.pw_gid)


def _start() -> dict:
    bindir = pg_bin()
    if bindir is None:
        _skip_or_fail("PostgreSQL server binaries (initdb, pg_ctl) not found: install the 'postgresql' "
                      "package or set NASDISTILL_PG_BIN")
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        _skip_or_fail("psycopg2 is not installed (pip install 'nasdistill[postgres]')")
    prefix, owner = _as_server_user()
    base = Path(tempfile.mkdtemp(prefix="nasdistill-pg-"))
    if owner is not None:
        os.chown(base, *owner)
    data, sock, log = base / "data", base / "sock", base / "server.log"

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([*prefix, *args], capture_output=True, text=True, check=check, timeout=120)

    try:
        run("mkdir", "-p", str(sock))
        run(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth-local=trust", "--auth-host=trust",
            "-E", "UTF8", "--no-sync")
        for _ in range(3):  # another process may take the free port between probing and binding
            port = _free_port()
            opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {sock} -c fsync=off -c max_connections=60"
            started = run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o", opts,
                          "start", check=False)
            if started.returncode == 0:
                return {"bin": bindir, "base": base, "data": data, "port": port, "prefix": prefix}
        tail = log.read_text(errors="replace")[-800:] if log.exists() else started.stderr
        raise RuntimeError(f"pg_ctl start failed: {tail}")
    except BaseException:
        shutil.rmtree(base, ignore_errors=True)
        raise


def _stop(server: dict) -> None:
    try:
        subprocess.run([*server["prefix"], str(server["bin"] / "pg_ctl"), "-D", str(server["data"]), "-m", "fast",
                        "-w", "stop"], capture_output=True, timeout=120)
    finally:
        shutil.rmtree(server["base"], ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server():
    """``{"port": PORT, ...}`` of a private PostgreSQL server on 127.0.0.1 (shared by the session)."""
    global _server, _users
    if _server is None:
        _server = _start()
    _users += 1
    yield _server
    _users -= 1
    if _users == 0:
        server, _server = _server, None
        _stop(server)


@pytest.fixture
def postgres_url(postgres_server) -> str:
    """A fresh, empty database on the test server, as an SQLAlchemy URL naming psycopg2."""
    import sqlalchemy as sa

    port = postgres_server["port"]
    name = f"test_{os.getpid()}_{next(_db_names)}"
    admin = sa.create_engine(f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return f"postgresql+psycopg2://postgres@127.0.0.1:{port}/{name}"
