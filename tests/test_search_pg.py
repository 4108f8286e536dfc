"""Search on PostgreSQL + pgvector: a real server (pgserver wheel), same answers as the embedded store."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT
from test_search import DIM, cli, clustered, exact_top, unit, write_model_folder

from embedkit import search

_counter = itertools.count()


@pytest.fixture
def db_uri(pg_uri) -> str:
    """A fresh database on the session's server for one test."""
    import psycopg

    name = f"t{os.getpid()}_{next(_counter)}"
    with psycopg.connect(pg_uri, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return pg_uri.replace("/postgres?", f"/{name}?")


def test_postgres_and_embedded_give_the_same_exact_top_k(tmp_path, db_uri, capsys):
    arrays, _ = clustered(150, frames=4, seed=7)
    write_model_folder(tmp_path / "out", arrays)
    for level in ("file", "segment"):
        base = ["--output_base", str(tmp_path / "out"), "--model", "emb", "--level", level]
        assert cli("index", *base, capsys=capsys)[0] == 0
        code, out, err = cli("index", *base, "--db", db_uri, capsys=capsys)
        assert code == 0, err
        assert f"{150 if level == 'file' else 600} vectors in the index" in out
        name = search.collection_name("emb", level)
        with (
            search.Index.open(tmp_path / "out/emb/.search", name) as emb,
            search.Index.open(db_uri, name) as pg,
        ):
            rng = np.random.default_rng(8)
            for q in rng.standard_normal((15, DIM)):
                a, b = emb.search(q, k=10, exact=True), pg.search(q, k=10, exact=True)
                assert [(h.path, h.start, h.end) for h in a] == [(h.path, h.start, h.end) for h in b]
                assert np.allclose([h.score for h in a], [h.score for h in b], atol=1e-5)
                if level == "file":
                    assert [h.path for h in a] == exact_top(arrays, q, 10)


def test_postgres_incremental_hnsw_and_like(tmp_path, db_uri, capsys):
    arrays, _ = clustered(80, frames=3, seed=9)
    write_model_folder(tmp_path / "out", arrays)
    base = ["--output_base", str(tmp_path / "out"), "--model", "emb", "--db", db_uri]
    code, out, _ = cli("index", *base, "--ann_threshold", "50", capsys=capsys)
    assert code == 0 and "80 outputs indexed" in out and "built the HNSW index over 80 vectors" in out
    import psycopg

    with psycopg.connect(db_uri) as conn:
        indexdef = conn.execute("SELECT indexdef FROM pg_indexes WHERE indexname LIKE '%hnsw'").fetchone()[0]
    assert "hnsw" in indexdef and "vector_cosine_ops" in indexdef
    code, out, _ = cli("index", *base, capsys=capsys)
    assert code == 0 and "0 outputs indexed" in out and "80 unchanged" in out
    os.unlink(tmp_path / "out/emb/d3/f003.npy")
    code, out, _ = cli("index", *base, capsys=capsys)
    assert code == 0 and "1 removed" in out and "79 vectors in the index" in out
    del arrays["d3/f003.wav"]
    code, out, _ = cli("query", "--like", "d1/f005.wav", *base, "--top", "5", "--json", capsys=capsys)
    assert code == 0
    got = [r["path"] for r in json.loads(out)["results"]]
    want = [p for p in exact_top(arrays, arrays["d1/f005.wav"].mean(0), 6) if p != "d1/f005.wav"][:5]
    assert set(got) == set(want)  # HNSW answer; ef_search 128 over 79 vectors finds the exact five


def test_postgres_bad_connections_are_configuration_errors(tmp_path, pg_server, capsys):
    arrays, _ = clustered(4)
    write_model_folder(tmp_path / "out", arrays)
    base = ["--output_base", str(tmp_path / "out"), "--model", "emb"]
    # nothing listens on port 1 of this machine
    code, _, err = cli("index", *base, "--db", "postgresql://u:p@127.0.0.1:1/db", capsys=capsys)
    assert code == 2 and "cannot connect to PostgreSQL" in err and "u:***@" in err and ":p@" not in err
    # a role that must give a password, given the wrong one
    pg_server.psql(
        "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'ekuser') THEN "
        "CREATE ROLE ekuser LOGIN PASSWORD 'right'; END IF; END $$;"
    )
    hba = pg_server.pgdata / "pg_hba.conf"
    if "ekuser" not in hba.read_text():
        hba.write_text("local all ekuser scram-sha-256\n" + hba.read_text())
        pg_server.psql("SELECT pg_reload_conf();")
    uri = pg_server.get_uri().replace("postgres:@", "ekuser:wrong@")
    code, _, err = cli("index", *base, "--db", uri, capsys=capsys)
    assert code == 2 and "password authentication failed" in err and "check the user name and password" in err
    assert "Traceback" not in err


@pytest.mark.slow
def test_killed_postgres_index_run_finishes_on_rerun(tmp_path, db_uri):
    arrays, _ = clustered(60, frames=20, seed=10)
    write_model_folder(tmp_path / "out", arrays)
    cmd = [
        sys.executable,
        str(ROOT / "run_search.py"),
        "index",
        "--output_base",
        str(tmp_path / "out"),
        "--model",
        "emb",
        "--level",
        "segment",
        "--commit_every",
        "2",
        "--db",
        db_uri,
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    for line in proc.stdout:
        if line.startswith("indexed 20 of"):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert "40 outputs indexed" in rerun.stdout and "1200 vectors in the index" in rerun.stdout
    with search.Index.open(db_uri, "emb_segment") as index:
        files = index.files()
        assert len(files) == 60 and all(rec["n"] == 20 for rec in files.values())
        hit = index.search(unit(arrays["d2/f010.wav"][7]), k=1)[0]
        assert hit.path == "d2/f010.wav" and hit.start == pytest.approx(0.65)
