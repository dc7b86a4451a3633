"""A store written by the code before the files backend (commit 92bc4eb: images in the database),
opened by today's: on SQLite and on a real PostgreSQL (its pg_dump), every prediction, output,
upload, url image and setting is there after the upgrade, the bytes in the files folder with
the digests the old code wrote, the `data` columns gone; an upgrade that stops half-way loses
nothing and finishes at the next start; a server on the upgraded store serves the old outputs.
The fixtures and how they were made: tests/support/make_v1_store.py."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import sqlalchemy as sa
from support.api_server import Server
from support.postgres import _bin, fresh_database

from sdxl.store.blobs import Blobs
from sdxl.store.limits import StoreLimits
from sdxl.store.store import Store
from sdxl.store.tables import SCHEMA_VERSION

DATA = Path(__file__).parent / "data"
DUMP = "store-v1-postgresql.sql"  # pg_dump of the old code's store
LIMITS = StoreLimits(ttl_s=100 * 365 * 86400)  # the fixture's rows are years old by now


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def manifest(name: str) -> dict:
    return json.loads((DATA / name).read_text())


def sqlite_copy(tmp_path: Path) -> str:
    shutil.copy(DATA / "store-v1.sqlite", tmp_path / "predictions.db")
    return f"sqlite:///{tmp_path / 'predictions.db'}"


def postgres_copy(admin_url: str) -> str:
    url = fresh_database(admin_url, "sdxl_v1_upgrade")
    parts = sa.engine.make_url(url)
    where = ["-h", parts.host, "-p", str(parts.port), "-U", parts.username, "-d", parts.database]
    subprocess.run(
        [
            _bin("psql"),
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            *where,
            "-f",
            DATA / "store-v1-postgresql.sql",
        ],
        check=True,
        capture_output=True,
    )
    return url


def assert_everything_is_there(store: Store, expected: dict) -> None:
    assert store.setting("webhook_secret", lambda: "new") == expected["settings"]["webhook_secret"]
    assert store.setting("tenant_salt", lambda: "new") == expected["settings"]["tenant_salt"]
    for prediction_id, was in expected["predictions"].items():
        row = store.predictions.get(prediction_id)
        assert (row["status"], row["tenant"], row["error"]) == (
            was["status"],
            was["tenant"],
            was["error"],
        )
        outputs = store.predictions.outputs_of(prediction_id)
        assert [(o["name"], o["token"]) for o in outputs] == [
            (o["name"], o["token"]) for o in was["outputs"]
        ]
        for output, old in zip(outputs, was["outputs"], strict=True):
            assert sha256(store.blobs.read(output["key"])) == old["sha256"]
            assert output["size"] == len(store.blobs.read(output["key"]))
    for file_id, was in expected["files"].items():
        assert sha256(store.files.data(file_id, was["tenant"])) == was["sha256"]
        assert store.files.get(file_id, "someone else") is None  # still the tenant's own
    for token, was in expected["image_urls"].items():
        row = store.files.image_by_token(token)
        assert row["name"] == was["name"] and sha256(store.blobs.read(row["key"])) == was["sha256"]
    with store.db.read() as conn:
        for table in ("outputs", "files", "image_urls"):
            assert "data" not in {c["name"] for c in sa.inspect(conn).get_columns(table)}


def assert_it_works_on(store: Store) -> None:
    """The upgraded store takes new work: alice's turn was read from her old claims."""
    store.predictions.create(
        {"id": "afterupgrade00000000000000", "model": "o/m", "version": "v", "input": {}}
    )
    turns = {turn.tenant: turn for turn in store.predictions.turns()}
    assert turns["alice"].served_at is not None  # her first prediction was claimed
    assert turns[None].waiting == 2  # the old one without a tenant and the new one


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_v1_store_is_upgraded_with_nothing_lost(backend, tmp_path, request):
    if backend == "sqlite":
        url, expected = sqlite_copy(tmp_path), manifest("store-v1.sqlite.json")
    else:
        url = postgres_copy(request.getfixturevalue("postgres_url"))
        expected = manifest("store-v1-postgresql.json")
    store = Store(url, tmp_path / "files", LIMITS)
    try:
        assert store.upgraded_from == 1
        assert_everything_is_there(store, expected)
        assert_it_works_on(store)
    finally:
        store.close()
    again = Store(url, tmp_path / "files", LIMITS)  # a restart: nothing left to upgrade
    try:
        assert again.upgraded_from == SCHEMA_VERSION
        assert_everything_is_there(again, expected)
    finally:
        again.close()


def test_an_upgrade_that_stops_half_way_loses_nothing_and_finishes_next_time(tmp_path, monkeypatch):
    url, expected = sqlite_copy(tmp_path), manifest("store-v1.sqlite.json")
    real, written = Blobs.put, []

    def crashes_on_the_third(self, key, data):
        if len(written) == 2:
            raise OSError("the disk went away")
        written.append(key)
        return real(self, key, data)

    monkeypatch.setattr(Blobs, "put", crashes_on_the_third)
    with pytest.raises(OSError, match="went away"):
        Store(url, tmp_path / "files", LIMITS)
    monkeypatch.undo()
    db = sa.create_engine(url)
    with db.connect() as conn:  # rolled back: every byte is still in the old columns
        assert conn.scalar(sa.text("SELECT count(*) FROM outputs WHERE data IS NOT NULL")) == 2
    db.dispose()
    store = Store(url, tmp_path / "files", LIMITS)
    try:
        assert store.upgraded_from == 1
        assert_everything_is_there(store, expected)
    finally:
        store.close()


def test_a_replica_with_another_files_folder_refuses_the_database(tmp_path):
    url = sqlite_copy(tmp_path)
    Store(url, tmp_path / "files", LIMITS).close()
    with pytest.raises(RuntimeError, match="SDXL_FILES_DIR"):
        Store(url, tmp_path / "elsewhere", LIMITS)


def test_a_server_on_the_upgraded_store_serves_the_old_outputs(tiny_weights, tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    shutil.copy(DATA / "store-v1.sqlite", state / "predictions.db")
    expected = manifest("store-v1.sqlite.json")
    env = {"SDXL_API_KEYS": "alice:alice-key", "SDXL_STATE_DIR": str(state)}
    env["SDXL_PREDICTION_TTL"] = str(int(LIMITS.ttl_s))  # the fixture's rows are years old
    server = Server(tiny_weights, tmp_path, env)
    try:
        server.wait_ready()
        done, was = next((k, v) for k, v in expected["predictions"].items() if v["outputs"])
        response = server.api("GET", f"/v1/predictions/{done}", key="alice-key")
        assert response.status_code == 200, response.text
        found = response.json()
        assert found["status"] == "succeeded"
        served = [base64.b64decode(uri.split(",", 1)[1]) for uri in found["output"]]
        assert [sha256(data) for data in served] == [o["sha256"] for o in was["outputs"]]
        assert (state / "files" / "outputs" / done).is_dir()  # the bytes moved out of the file
    finally:
        server.stop()


def test_a_version_2_store_gains_the_trainings_tables_with_its_predictions_kept(tmp_path):
    """Version 2 (the files backend, before fine-tuning) as its code left it: the current
    schema without the trainings', models' and versions' tables, schema_version 2."""
    url = f"sqlite:///{tmp_path / 'v2.db'}"
    store = Store(url, tmp_path / "files", LIMITS)
    kept = store.predictions.create(
        {
            "id": "fromversiontwo00000000000",
            "model": "o/m",
            "version": "v",
            "input": {"prompt": "kept"},
        }
    )
    store.close()
    db = sa.create_engine(url)
    with db.begin() as conn:
        for table in ("versions", "models", "trainings"):
            conn.execute(sa.text(f"DROP TABLE {table}"))
        conn.execute(sa.text("UPDATE settings SET value = '2' WHERE name = 'schema_version'"))
    db.dispose()
    store = Store(url, tmp_path / "files", LIMITS)
    try:
        assert store.upgraded_from == 2
        assert store.predictions.get(kept["id"])["input"] == {"prompt": "kept"}
        made = store.destinations.create(
            dict(owner="a", name="m", tenant="a", visibility="private", hardware="gpu")
        )
        assert made["owner"] == "a"
        assert store.trainings.page(None, 10) == []
    finally:
        store.close()


def test_a_version_3_store_gains_the_uploads_index_by_tenant(tmp_path):
    """Version 3 (before the tenants' shares): no index of uploads by tenant, which each
    upload's share check reads."""
    url = f"sqlite:///{tmp_path / 'v3.db'}"
    Store(url, tmp_path / "files", LIMITS).close()
    db = sa.create_engine(url)
    with db.begin() as conn:
        conn.execute(sa.text("DROP INDEX ix_files_tenant"))
        conn.execute(sa.text("UPDATE settings SET value = '3' WHERE name = 'schema_version'"))
    db.dispose()
    store = Store(url, tmp_path / "files", LIMITS)
    try:
        assert store.upgraded_from == 3
        with db.connect() as conn:
            indexes = {index["name"] for index in sa.inspect(conn).get_indexes("files")}
        assert "ix_files_tenant" in indexes
    finally:
        store.close()
        db.dispose()
