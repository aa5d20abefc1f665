"""LLM reviewer against a small local server speaking the OpenAI chat-completions protocol (127.0.0.1 only)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from synthehr.audit import audit, load_rules
from synthehr.audit.llm import LLMConfig, LLMReviewer, Review, agreement, parse_reply, summarise_records
from tests.audit.helpers import T0, ev, frame, person

GOOD = {"consistent": False, "findings": [{"family": "sex", "severity": "error",
                                           "description": "delivery code in a male", "evidence": ["O80"]}]}


class FakeServer:
    """ThreadingHTTPServer on an ephemeral loopback port; `replies` is a list of callables or strings
    consumed in order (the last one repeats)."""

    def __init__(self):
        self.replies: list = [json.dumps(GOOD)]
        self.requests: list[dict] = []
        self.delay = 0.0
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.requests.append({"path": self.path, "body": body,
                                           "auth": self.headers.get("Authorization")})
                    outer.in_flight += 1
                    outer.max_in_flight = max(outer.max_in_flight, outer.in_flight)
                    reply = outer.replies.pop(0) if len(outer.replies) > 1 else outer.replies[0]
                try:
                    time.sleep(outer.delay)
                finally:
                    # done before the reply goes out: once the client has its reply it may send the next
                    # request, and that one must not be counted as overlapping this one
                    with outer.lock:
                        outer.in_flight -= 1
                if isinstance(reply, int):
                    self.send_response(reply)
                    self.end_headers()
                    return
                payload = {"id": "x", "object": "chat.completion", "model": body.get("model"),
                           "choices": [{"index": 0, "finish_reason": "stop",
                                        "message": {"role": "assistant", "content": reply}}]}
                data = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = FakeServer()
    yield s
    s.close()


def cfg(server, **kw) -> LLMConfig:
    base = dict(base_url=server.url, model="tiny", timeout_s=5, max_retries=2, backoff_s=0.01, concurrency=2)
    base.update(kw)
    return LLMConfig(**base)


def test_review_parses_and_validates(server):
    r = LLMReviewer(cfg(server, api_key="k")).review({1: "sex: M\nday 0: DIAGNOSIS//ICD//10//O80"})
    assert len(r) == 1 and r[0].status == "ok" and r[0].consistent is False
    assert r[0].findings[0]["family"] == "sex"
    req = server.requests[0]
    assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer k"
    assert req["body"]["model"] == "tiny" and req["body"]["response_format"] == {"type": "json_object"}
    assert "O80" in req["body"]["messages"][1]["content"]


def test_malformed_json_is_retried_then_recorded_as_error(server):
    server.replies = ["not json at all", "{\"consistent\": \"maybe\", \"findings\": []}", "```json\n{oops```"]
    r = LLMReviewer(cfg(server, max_retries=2)).review({7: "record"})[0]
    assert r.status == "error" and r.attempts == 3 and len(server.requests) == 3
    assert "invalid JSON" in r.error


def test_malformed_then_valid_succeeds_and_fences_are_tolerated(server):
    server.replies = ["garbage", "```json\n" + json.dumps({"consistent": True, "findings": []}) + "\n```"]
    r = LLMReviewer(cfg(server)).review({1: "record"})[0]
    assert r.status == "ok" and r.consistent is True and r.attempts == 2


def test_cache_hit_sends_no_request(server, tmp_path):
    c = cfg(server, cache_dir=tmp_path / "cache")
    first = LLMReviewer(c).review({1: "same record"})[0]
    assert first.status == "ok" and not first.cached and len(server.requests) == 1
    again = LLMReviewer(c).review({2: "same record"})[0]      # a new reviewer: the disk cache answers
    assert again.cached and again.findings == first.findings and len(server.requests) == 1
    rev = LLMReviewer(c)
    rev.review({3: "other record"})
    rev.review({3: "other record"})                          # memory cache
    assert len(server.requests) == 2


def test_timeout_is_retried_then_error(server):
    server.delay = 1.0
    t0 = time.perf_counter()
    r = LLMReviewer(cfg(server, timeout_s=0.2, max_retries=1)).review({1: "slow"})[0]
    assert r.status == "error" and r.attempts == 2 and "timeout" in r.error.lower()
    assert time.perf_counter() - t0 < 3


def test_server_errors_are_retried(server):
    server.replies = [500, 503, json.dumps(GOOD)]
    r = LLMReviewer(cfg(server, max_retries=2)).review({1: "x"})[0]
    assert r.status == "ok" and r.attempts == 3


def test_bounded_concurrency(server):
    server.delay = 0.15
    summaries = {i: f"record {i}" for i in range(8)}
    reviews = LLMReviewer(cfg(server, concurrency=3)).review(summaries)
    assert [r.status for r in reviews] == ["ok"] * 8 and [r.subject_id for r in reviews] == list(range(8))
    assert 2 <= server.max_in_flight <= 3


def test_nothing_is_sent_without_a_configured_url(server, monkeypatch):
    monkeypatch.delenv("SYNTHEHR_LLM_URL", raising=False)
    c = LLMConfig.from_env()
    assert not c.enabled
    rev = LLMReviewer(c)
    assert rev.review({1: "record"}) == [] and rev.requests_sent == 0 and server.requests == []


def test_env_configuration(server, monkeypatch):
    monkeypatch.setenv("SYNTHEHR_LLM_URL", server.url)
    monkeypatch.setenv("SYNTHEHR_LLM_MODEL", "envmodel")
    c = LLMConfig.from_env()
    assert c.enabled and c.model == "envmodel"
    LLMReviewer(c).review({1: "r"})
    assert server.requests[0]["body"]["model"] == "envmodel"


def test_parse_reply_schema():
    assert parse_reply(json.dumps(GOOD))[0] == GOOD
    bad = {"consistent": True, "findings": [{"family": "astrology", "severity": "error", "description": "x"}]}
    obj, why = parse_reply(json.dumps(bad))
    assert obj is None and "astrology" in why


def test_summary_and_agreement():
    rows = (person(1, "M") + [ev(1, "DIAGNOSIS//ICD//10//O80", T0), ev(1, "MEDICATION//Warfarin//Administered", T0)]
            + person(2, "F") + [ev(2, "LAB//220045//bpm", T0, 80.0)])
    events = frame(rows)
    s = summarise_records(events, [1, 2], rules=load_rules())
    assert "sex: M" in s[1] and "O80" in s[1] and "warfarin" in s[1] and "2150" not in s[1]  # no dates
    res = audit(events)
    reviews = [Review(1, "ok", False, GOOD["findings"]), Review(2, "ok", True, []), Review(3, "error")]
    ag = agreement(res.findings, reviews)
    assert ag["records_judged_by_both"] == 2 and ag["reviewer_errors"] == 1
    assert ag["overall"]["agreement"] == 1.0 and ag["by_family"]["sex"]["both"] == 1
