"""Caller paths stay in data/, SQLite state is WAL + versioned, arrays load from files like inline."""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest

from mlmesh.errors import BadRequest, InvalidInput
from mlmesh.state import SchemaTooNew
from services.framework import FileRef, StateDB, confine, load_numbers


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    (path / "sub").mkdir(parents=True)
    (path / "sub" / "x.csv").write_text("a,b\n1,2\n3,4\n")
    return path


def test_confine_accepts_paths_inside(data_dir: Path) -> None:
    assert confine(data_dir, "sub/x.csv") == (data_dir / "sub" / "x.csv").resolve()
    assert confine(data_dir, "./sub/../sub/x.csv".replace("../sub/", "")) == (data_dir / "sub" / "x.csv").resolve()


@pytest.mark.parametrize("bad", ["../secret", "sub/../../x", "/etc/passwd", "C:/windows", "a\x00b", "", "..\\x"])
def test_confine_rejects_escapes(data_dir: Path, bad: str) -> None:
    with pytest.raises(BadRequest, match=r"^input_path: "):
        confine(data_dir, bad, field="input_path")


def test_overlong_names_are_400(data_dir: Path) -> None:
    with pytest.raises(BadRequest, match=r"^x\.path: "):
        load_numbers(FileRef(path="a" * 300 + ".npy"), data_dir, field="x")
    # Refused by confine itself, before any component opens the file (a missing file never reaches resolve's check).
    for bad in ("0" * 256, "/".join(["a" * 200] * 6), "é" * 128):
        with pytest.raises(BadRequest, match=r"^dataset\.path: too long"):
            confine(data_dir, bad, field="dataset.path")
    assert confine(data_dir, "a" * 255) == (data_dir / ("a" * 255)).resolve()


def test_confine_rejects_symlinks_out(data_dir: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("secret")
    os.symlink(outside, data_dir / "link.txt")
    os.symlink(tmp_path, data_dir / "dirlink")
    for name in ("link.txt", "dirlink/outside.txt"):
        with pytest.raises(BadRequest, match="outside the data directory"):
            confine(data_dir, name)


def test_state_db_is_wal_versioned_and_migrates(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    db = StateDB(path, ["CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"])
    assert db.schema_version == 1
    assert db.connect().execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with db.transaction() as conn:
        conn.execute("INSERT INTO t (v) VALUES ('a')")
    db.close()
    upgraded = StateDB(path, ["CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)", "ALTER TABLE t ADD COLUMN w INTEGER"])
    assert upgraded.schema_version == 2
    assert upgraded.connect().execute("SELECT v, w FROM t").fetchone()[:] == ("a", None)
    upgraded.close()
    with pytest.raises(SchemaTooNew):
        StateDB(path, ["CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"])


def test_state_db_rolls_back_and_serialises_writers(tmp_path: Path) -> None:
    db = StateDB(tmp_path / "c.sqlite", ["CREATE TABLE c (n INTEGER NOT NULL)", "INSERT INTO c VALUES (0)"])
    with pytest.raises(RuntimeError), db.transaction() as conn:
        conn.execute("UPDATE c SET n = 100")
        raise RuntimeError("abort")
    assert db.connect().execute("SELECT n FROM c").fetchone()[0] == 0

    def bump() -> None:
        for _ in range(50):
            with db.transaction() as conn:
                (n,) = conn.execute("SELECT n FROM c").fetchone()
                conn.execute("UPDATE c SET n = ?", (n + 1,))

    threads = [threading.Thread(target=bump) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert db.connect().execute("SELECT n FROM c").fetchone()[0] == 400
    assert sqlite3.connect(tmp_path / "c.sqlite").execute("PRAGMA user_version").fetchone()[0] == 2


def test_numbers_from_files_equal_inline(data_dir: Path) -> None:
    values = [1.5, -2.0, 3.25, 4.0]
    np.save(data_dir / "v.npy", np.array(values))
    (data_dir / "v.json").write_text("[1.5, -2.0, 3.25, 4.0]")
    (data_dir / "v.csv").write_text("score,other\n" + "\n".join(f"{v},0" for v in values) + "\n")
    (data_dir / "plain.csv").write_text("\n".join(str(v) for v in values) + "\n")
    inline = load_numbers(values, data_dir, field="x")
    for ref in [
        FileRef(path="v.npy"),
        FileRef(path="v.json"),
        FileRef(path="v.csv", column="score"),
        FileRef(path="v.csv", column=0),
        FileRef(path="plain.csv"),
    ]:
        np.testing.assert_array_equal(load_numbers(ref, data_dir, field="x"), inline)


def test_numbers_errors_name_the_field(data_dir: Path) -> None:
    with pytest.raises(BadRequest, match=r"^x\.path: no such file"):
        load_numbers(FileRef(path="missing.npy"), data_dir, field="x")
    with pytest.raises(InvalidInput, match=r"^x\.column: "):
        load_numbers(FileRef(path="sub/x.csv"), data_dir, field="x")
    with pytest.raises(InvalidInput, match=r"^x\.column: no column named 'zz'"):
        load_numbers(FileRef(path="sub/x.csv", column="zz"), data_dir, field="x")
    np.save(data_dir / "nan.npy", np.array([1.0, np.nan]))
    with pytest.raises(InvalidInput, match=r"^x: must contain only finite"):
        load_numbers(FileRef(path="nan.npy"), data_dir, field="x")
    (data_dir / "bad.csv").write_text("a\n1\nxyz\n")
    with pytest.raises(BadRequest, match=r"^x\.path: could not read"):
        load_numbers(FileRef(path="bad.csv"), data_dir, field="x")
    with pytest.raises(BadRequest, match="unsupported file type"):
        (data_dir / "v.txt").write_text("1")
        load_numbers(FileRef(path="v.txt"), data_dir, field="x")


def test_many_threads_opening_one_new_database_at_once(tmp_path: Path) -> None:
    # Each opens its own StateDB on the same new file, as two runs of a component may: none may see "locked".
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def open_it() -> None:
        barrier.wait()
        try:
            db = StateDB(tmp_path / "shared.sqlite", ["CREATE TABLE t (x INTEGER)"])
            with db.transaction() as conn:
                conn.execute("INSERT INTO t VALUES (1)")
            db.close()
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    check = sqlite3.connect(tmp_path / "shared.sqlite")
    assert check.execute("SELECT COUNT(*) FROM t").fetchone()[0] == 8
    assert check.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    check.close()
