"""A real PostgreSQL for the tests: SDXL_TEST_DATABASE_URL when set, else a throwaway cluster
of Debian's `postgresql` package (initdb in a temporary folder, loopback only, trust auth),
started here and stopped at the end of the session."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import sqlalchemy as sa

from sdxl.net.ports import free_port

MISSING = (
    "PostgreSQL is needed for the shared-store tests: install Debian's package "
    "(apt-get install -y postgresql, as the README's test command does) or set "
    "SDXL_TEST_DATABASE_URL to a database the tests may create databases in"
)


def _bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    return candidates[0] if candidates else None


class Cluster:
    """A PostgreSQL server in `folder`, run as the `postgres` user when the tests run as root
    (initdb refuses root)."""

    def __init__(self, folder: Path):
        initdb, pg_ctl = _bin("initdb"), _bin("pg_ctl")
        if initdb is None or pg_ctl is None:
            pytest.fail(MISSING)
        self.pg_ctl = pg_ctl
        self.folder = folder
        self.data = folder / "data"
        self.port = free_port()
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        folder.mkdir(parents=True, exist_ok=True)
        if self.as_user:
            shutil.chown(folder, "postgres", "postgres")
        self._run(initdb, "-D", str(self.data), "-U", "sdxl", "--auth=trust", "-E", "UTF8")
        self.start()
        self.url = f"postgresql+psycopg://sdxl@127.0.0.1:{self.port}/postgres"

    @property
    def log(self) -> Path:
        return self.folder / "postgres.log"

    def _run(self, *argv: str) -> None:
        done = subprocess.run([*self.as_user, *argv], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.fail(f"{' '.join(argv)} failed:\n{done.stdout}\n{done.stderr}")

    def start(self) -> None:
        self.running = True
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            self.pg_ctl, "-D", str(self.data), "-o", options, "-l", str(self.log), "-w", "start"
        )

    def stop(self) -> None:
        """As a crash or a kill would: no shutdown checkpoint, connections cut."""
        if not self.running:
            return
        self.running = False
        self._run(self.pg_ctl, "-D", str(self.data), "-m", "immediate", "stop")


def fresh_database(admin_url: str, name: str) -> str:
    """A new, empty database `name` on the server of `admin_url`; its URL."""
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    finally:
        admin.dispose()
    return admin.url.set(database=name).render_as_string(hide_password=False)
