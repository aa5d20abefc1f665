"""Feedback written while the server is killed mid-request is fully stored or absent, never corrupt.

A real `synthehr serve` process (SQLite, WAL, synchronous=FULL) takes decisions from several
concurrent clients and is SIGKILLed while requests are in flight. Then: the database passes
integrity_check, every stored review is complete (its long reason intact), every acknowledged
review is there, and each record's counters equal its reviews (they are written in one transaction).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import threading
import time
import urllib.error
import urllib.request

import pytest

from synthehr.benchmarks.app_load import start_server, stop_server

pytestmark = pytest.mark.timeout(240)

N_RECORDS, REVIEWERS, THREADS, KILL_AFTER = 40, ("ann", "ben", "cat", "dev"), 6, 40


def _post(port: int, path: str, body: dict, timeout: float = 30) -> tuple[int, dict]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(), method="POST",
                                 headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def _get(port: int, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as r:
        return json.loads(r.read())


def _reason(rid: int, who: str) -> str:
    return f"record {rid} by {who}: " + "; ".join(["implausible combination"] * 40)  # ~1 kB: a torn write shows


def _decision(rid: int, who: str) -> str:
    return "flag" if (rid + len(who) + ord(who[0])) % 3 == 0 else "accept"


def test_kill_mid_request_leaves_feedback_whole_or_absent(tmp_path, demo_model_dir):
    db = tmp_path / "feedback.sqlite3"
    url = f"sqlite:///{db}"
    proc, port = start_server(demo_model_dir, None, tmp_path / "userdata", extra=["--db", url])
    try:
        status, out = _post(port, "/api/review/enqueue", {"model": "gaussian", "n": N_RECORDS, "seed": 4})
        assert status == 200 and out["added"] == N_RECORDS
        ids = [i for i in range(1, N_RECORDS + 1)]
        tasks = [(rid, who) for who in REVIEWERS for rid in ids]
        lock = threading.Lock()
        acked: set[tuple[int, str]] = set()
        started: set[tuple[int, str]] = set()
        failed: list[str] = []
        stop = threading.Event()

        def worker(k: int):
            for i in range(k, len(tasks), THREADS):
                if stop.is_set():
                    return
                rid, who = tasks[i]
                with lock:
                    started.add((rid, who))
                try:
                    code, _ = _post(port, f"/api/review/{rid}/decision",
                                    {"reviewer": who, "decision": _decision(rid, who), "reason": _reason(rid, who)},
                                    timeout=10)
                except (OSError, urllib.error.URLError) as e:  # the server died under us
                    failed.append(type(e).__name__)
                    return
                if code == 200:
                    with lock:
                        acked.add((rid, who))
                else:
                    failed.append(f"HTTP {code}")

        threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(THREADS)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 120
        while len(acked) < KILL_AFTER and time.monotonic() < deadline:
            time.sleep(0.002)
        assert len(acked) >= KILL_AFTER, f"server too slow: {len(acked)} decisions in 120 s ({failed[:3]})"
        os.killpg(proc.pid, signal.SIGKILL)  # no shutdown, no checkpoint: as if the power went
        stop.set()
        for t in threads:
            t.join(30)
        proc.wait(30)
    finally:
        stop_server(proc)

    in_flight = started - acked
    assert in_flight, "the kill should land while some requests are unanswered"
    assert not [f for f in failed if f.startswith("HTTP")], failed

    con = sqlite3.connect(db)  # recovers the WAL like the next server start would
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    rows = con.execute("SELECT record_id, reviewer, decision, reason, created_at FROM reviews").fetchall()
    stored = {(rid, who) for rid, who, *_ in rows}
    assert acked <= stored, f"acknowledged but lost: {sorted(acked - stored)[:5]}"
    assert stored <= started, "a review nobody sent"
    for rid, who, decision, reason, created in rows:
        assert decision == _decision(rid, who) and reason == _reason(rid, who) and created, (rid, who)
    counts = con.execute("""SELECT r.id, r.n_reviews, r.n_flags, count(v.id),
                                   coalesce(sum(v.decision = 'flag'), 0)
                            FROM review_records r LEFT JOIN reviews v ON v.record_id = r.id GROUP BY r.id""").fetchall()
    assert len(counts) == N_RECORDS
    for rid, n_reviews, n_flags, n, flags in counts:
        assert (n_reviews, n_flags) == (n, flags), f"record {rid}: counters {n_reviews}/{n_flags} vs {n}/{flags}"
    con.close()

    # the next server start opens the same store and reports exactly what was kept
    proc, port = start_server(demo_model_dir, None, tmp_path / "userdata", extra=["--db", url])
    try:
        stats = _get(port, "/api/review/stats")
        assert stats["n_reviews"] == len(rows) and stats["n_records"] == N_RECORDS
    finally:
        stop_server(proc)
