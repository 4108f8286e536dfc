"""Search under what an adversarial pass did to it (issue 23): look-alike names, concurrent and killed
rebuilds, paths as collection names, file names that are not UTF-8, PostgreSQL stopped mid-index.
Both stores, PostgreSQL being a real server (pgserver)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import ROOT
from test_search import DIM, cli, clustered, write_model_folder
from test_search_pg import db_uri  # noqa: F401  (fixture)

from embedkit import search

STORES = ["embedded", "postgres"]


def _db(store: str, request, tmp_path) -> str:
    return request.getfixturevalue("db_uri") if store == "postgres" else str(tmp_path / "db")


def _state(db: str, name: str) -> tuple[dict, int]:
    with search.Index.open(db, name) as index:
        files = index.files()
        total = len(index)
    assert total == sum(f["n"] for f in files.values())  # no orphaned or duplicated vectors
    return {out: f["source"] for out, f in files.items()}, total


def test_collection_names_are_names_not_paths(tmp_path, capsys):
    """Issue 23 item 6: `--collection ../../melspec` wrote the store into the model folder."""
    arrays, _ = clustered(6)
    write_model_folder(tmp_path / "out", arrays)
    before = sorted(p for p in (tmp_path / "out").rglob("*"))
    base = ["--output_base", str(tmp_path / "out"), "--model", "emb"]
    for bad in ("../../emb", "../x", "a/b", ".hidden", ""):
        code, _, err = cli("index", *base, "--collection", bad, capsys=capsys)
        assert code == 2 and "is not a name" in err, (bad, err)
    code, _, err = cli("index", "--output_base", str(tmp_path / "out"), "--model", "../out/emb",
                       capsys=capsys)
    assert code == 2 and "not a path" in err
    assert sorted(p for p in (tmp_path / "out").rglob("*")) == before  # nothing written anywhere


@pytest.mark.parametrize("store", STORES)
def test_rebuild_takes_its_turn_at_the_writer_lock(tmp_path, request, capsys, store):
    """Issue 23 item 5: a --rebuild beside a running writer removed its collection under it."""
    db = _db(store, request, tmp_path)
    arrays, _ = clustered(12)
    write_model_folder(tmp_path / "out", arrays)
    base = ["--output_base", str(tmp_path / "out"), "--model", "emb", "--db", db]
    assert cli("index", *base, capsys=capsys)[0] == 0
    before = _state(db, "emb_file")
    folder = search.collection_info(search_folder(tmp_path), "file")
    with search.Index.open(db, "emb_file", create=folder, writer=True):  # a writer at work
        code, _, err = cli("index", *base, "--rebuild", capsys=capsys)
        assert code == 2 and "another process is writing" in err
        assert _state(db, "emb_file") == before
    if store == "embedded":
        assert list((tmp_path / "db" / "emb_file").glob("ann-*.faiss")) == []
    code, out, _ = cli("index", *base, "--rebuild", capsys=capsys)
    assert code == 0 and "12 outputs indexed" in out and "(rebuilt)" in out
    assert _state(db, "emb_file") == before


def search_folder(tmp_path):
    from embedkit import results

    return results.ModelFolder.open(tmp_path / "out", "emb")


@pytest.mark.slow
@pytest.mark.parametrize("store", STORES)
def test_a_killed_rebuild_leaves_the_old_index_answering(tmp_path, request, capsys, store):
    """Issue 23 item 5: a --rebuild killed half-way left half an index that queries answered from."""
    db = _db(store, request, tmp_path)
    arrays, _ = clustered(60, frames=4, seed=11)
    write_model_folder(tmp_path / "out", arrays)
    base = ["--output_base", str(tmp_path / "out"), "--model", "emb", "--db", db]
    assert cli("index", *base, capsys=capsys)[0] == 0
    before = _state(db, "emb_file")
    q = arrays["d2/f006.wav"].mean(axis=0)
    with search.Index.open(db, "emb_file") as index:
        answer = [(h.path, round(h.score, 5)) for h in index.search(q, k=5)]
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "run_search.py"), "index", *base, "--rebuild", "--commit_every", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    for line in proc.stdout:
        if line.startswith("indexed 20 of 60"):  # a third of the new collection written
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert _state(db, "emb_file") == before  # the old collection, whole
    with search.Index.open(db, "emb_file") as index:
        assert [(h.path, round(h.score, 5)) for h in index.search(q, k=5)] == answer
    if store == "postgres":
        _wait_for_the_lock(db, "emb_file")  # the server ends the killed session's lock when it notices
    code, out, _ = cli("index", *base, capsys=capsys)  # the next writer: nothing to redo, leftovers gone
    assert code == 0 and "0 outputs indexed" in out and "60 unchanged" in out
    if store == "embedded":
        coll = tmp_path / "db" / "emb_file"
        with search.Index.open(db, "emb_file") as index:
            named = {r[0] for r in index.store.db.execute("SELECT name FROM segments")}
        assert {p.name.split(".")[0] for p in (coll / "segments").iterdir()} == named
    code, out, _ = cli("index", *base, "--rebuild", capsys=capsys)
    assert code == 0 and "60 outputs indexed" in out and _state(db, "emb_file") == before


def _wait_for_the_lock(uri: str, name: str, timeout: float = 30.0) -> None:
    import psycopg

    deadline = time.monotonic() + timeout
    with psycopg.connect(uri, autocommit=True) as conn:
        while not conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (name,)).fetchone()[0]:
            assert time.monotonic() < deadline, "the killed writer's session lock was never released"
            time.sleep(0.05)
        conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (name,))


def test_look_alike_model_names_get_their_own_postgres_tables(tmp_path, db_uri, capsys):  # noqa: F811
    """Issue 23 item 1: `mel-spec` and `mel_spec` shared ek_mel_spec_file_* (20 rows instead of 40)."""
    dash, _ = clustered(20, seed=1)
    under, _ = clustered(20, seed=2)
    write_model_folder(tmp_path / "out", dash, alias="mel-spec")
    write_model_folder(tmp_path / "out", under, alias="mel_spec")
    for alias in ("mel-spec", "mel_spec"):
        code, out, err = cli("index", "--output_base", str(tmp_path / "out"), "--model", alias,
                             "--db", db_uri, capsys=capsys)
        assert code == 0 and "20 outputs indexed" in out, err
    q = dash["d1/f005.wav"].mean(axis=0)
    with search.Index.open(db_uri, "mel-spec_file") as a, search.Index.open(db_uri, "mel_spec_file") as b:
        assert len(a) == 20 and len(b) == 20 and a.store.t_files != b.store.t_files
        top_a, top_b = a.search(q, k=1)[0], b.search(q, k=1)[0]
    assert top_a.path == "d1/f005.wav" and top_a.score == pytest.approx(1.0, abs=1e-5)
    means = {k: v.astype(np.float64).mean(axis=0) for k, v in under.items()}
    cos = {k: m @ q / np.linalg.norm(m) / np.linalg.norm(q) for k, m in means.items()}
    best = max(cos, key=cos.get)
    assert (top_b.path, round(top_b.score, 4)) == (best, round(cos[best], 4))  # mel_spec's own vectors


@pytest.mark.parametrize("store", STORES)
def test_a_name_that_is_not_utf8_is_indexed_and_found_exactly(tmp_path, request, capsys, store):
    """Issue 23 item 8: one non-UTF-8 file name stopped the whole index (UnicodeEncodeError)."""
    db = _db(store, request, tmp_path)
    name = os.fsdecode(b"caf\xe9.wav")
    arrays, _ = clustered(5)
    arrays[name] = np.ones((3, DIM), np.float32)
    write_model_folder(tmp_path / "out", arrays)
    assert os.fsencode(name.replace(".wav", ".npy")) in os.listdir(os.fsencode(tmp_path / "out" / "emb"))
    base = ["--output_base", str(tmp_path / "out"), "--model", "emb", "--db", db]
    code, out, err = cli("index", *base, capsys=capsys)
    assert code == 0 and "6 outputs indexed" in out, err
    code, out, _ = cli("query", "--like", "d0/f000.wav", *base, "--top", "10", "--json", capsys=capsys)
    paths = [h["path"] for h in json.loads(out)["results"]]
    assert code == 0 and name in paths  # the JSON escapes keep its bytes exactly
    code, out, err = cli("query", "--like", name, *base, capsys=capsys)
    assert code == 0 and "query: caf\\xe9.wav" in out, err
    assert _state(db, "emb_file")[0]["caf\udce9.npy"] == name


@pytest.mark.slow
def test_postgres_stopped_mid_index_is_one_message_and_a_consistent_index(tmp_path, capsys):
    """Issue 23 item 11: a lost server gave a psycopg traceback. Now: one line, exit 1, and the index
    holds what was committed; after a restart, a rerun finishes it."""
    import psycopg
    import pgserver
    from pgserver.postgres_server import pg_ctl

    (tmp_path / "pg").mkdir()
    server = pgserver.get_server(tmp_path / "pg" / "data", cleanup_mode="delete")
    try:
        uri = server.get_uri()
        arrays, _ = clustered(40, seed=3)
        first = dict(sorted(arrays.items())[:10])
        write_model_folder(tmp_path / "out", first)
        base = ["--output_base", str(tmp_path / "out"), "--model", "emb", "--db", uri, "--commit_every", "1"]
        assert cli("index", *base, capsys=capsys)[0] == 0
        before = _state(uri, "emb_file")
        write_model_folder(tmp_path / "out", {k: v for k, v in arrays.items() if k not in first})
        with search.Index.open(uri, "emb_file") as index:
            files_table = index.store.t_files
        blocker = psycopg.connect(uri)  # closed by the server's stop
        blocker.execute(f"LOCK TABLE {files_table} IN SHARE ROW EXCLUSIVE MODE")  # writes wait on it
        proc = subprocess.Popen([sys.executable, str(ROOT / "run_search.py"), "index", *base],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        with psycopg.connect(uri, autocommit=True) as watch:  # the indexer is mid-index: waiting to write
            deadline = time.monotonic() + 60
            while not watch.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                    "AND pid <> pg_backend_pid()").fetchone()[0]:
                assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
                time.sleep(0.05)
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 1 and "Traceback" not in err, err
        (line,) = [ln for ln in err.splitlines() if ln.strip()]
        assert line.startswith("error: lost the connection to PostgreSQL") and "rerun" in line
        with server._lock:
            server.ensure_postgres_running()
        uri = server.get_uri()
        assert _state(uri, "emb_file") == before
        code, out, _ = cli("index", *[uri if a.startswith("postgres") else a for a in base], capsys=capsys)
        assert code == 0 and "30 outputs indexed" in out and len(_state(uri, "emb_file")[0]) == 40
    finally:
        server.cleanup()
