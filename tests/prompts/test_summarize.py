"""77-token fitting: the deterministic shortener on real OpenI impressions, and the
OpenAI-compatible HTTP summarizer against a local stub server (127.0.0.1 only)."""
from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from rv2.prompts.summarize import (
    PAPER_INSTRUCTION,
    HttpSummarizer,
    LLMSettings,
    RuleShortener,
    SummarizerError,
)
from rv2.prompts.template import PromptTemplate, clean_impression
from rv2.prompts.tokenizer import count_tokens

NEGATIONS = {"no", "not", "without", "negative"}


@pytest.fixture(scope="module")
def long_impressions(openi_reports):
    t = PromptTemplate()
    texts = sorted({t.format_impression(clean_impression(r["impression"]))
                    for r in openi_reports if r["impression"]})
    return [x for x in texts if count_tokens(x) > 70]


def _words(text):
    return set(re.findall(r"[A-Za-z0-9]+(?:[-/.][A-Za-z0-9]+)*", text.lower()))


def test_rule_shortener_fits_real_impressions(long_impressions):
    rs = RuleShortener()
    assert len(long_impressions) >= 90
    for budget in (70, 40, 20):
        for text in long_impressions:
            out = rs.summarize(text, budget)
            assert count_tokens(out) <= budget, (budget, text)
            assert out, text
            # Never cuts a word: every output word is a source word.
            assert _words(out) <= _words(text) | {"ray"}, (out, text)
            # A negation never ends a text without its finding.
            assert out.rstrip(" .").split(" ")[-1].lower() not in NEGATIONS
            assert out.endswith((".", "?", "!"))
    # Deterministic.
    assert [rs.summarize(t, 40) for t in long_impressions[:20]] == \
        [rs.summarize(t, 40) for t in long_impressions[:20]]


def test_rule_shortener_leaves_fitting_text_alone():
    text = "No acute cardiopulmonary process ."
    assert RuleShortener().summarize(text, 77) == text


def test_rule_shortener_drops_boilerplate_first_and_keeps_findings():
    text = ("1. Moderate right pleural effusion with adjacent atelectasis. 2. No pneumothorax. "
            "3. Recommend followup radiograph in 4 weeks to document resolution. Dr. Smith was "
            "notified by telephone at 3 pm on the day of the study and acknowledged receipt.")
    expected = "Moderate right pleural effusion with adjacent atelectasis. No pneumothorax."
    budget = count_tokens(expected) + 3
    out = RuleShortener().summarize(text, budget)
    assert out == expected
    assert count_tokens(out) <= budget


def test_rule_shortener_single_sentence_trims_clauses_and_words():
    text = ("There is no pleural effusion, pneumothorax, consolidation, or pulmonary edema and "
            "the cardiomediastinal silhouette is within normal limits for the patient's age")
    out = RuleShortener().summarize(text, 12)
    assert count_tokens(out) <= 12
    assert out.startswith("No pleural effusion")  # "There is" compacted, negation kept
    # Room for "No." alone: a stranded negation is worse than nothing.
    assert RuleShortener().summarize(text, 4) == ""
    # Not even one word fits: empty, never a cut word.
    assert RuleShortener().summarize("Pneumomediastinum", 3) == ""


# ------------------------------------------------------------------ HTTP stub

class _Stub(BaseHTTPRequestHandler):
    plan: list = []        # per request: ("ok", text) | ("status", code) | ("sleep", s) | ("garbage",)
    seen: list = []

    def log_message(self, *a):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append({"path": self.path, "body": body,
                                "auth": self.headers.get("Authorization")})
        action = type(self).plan.pop(0) if type(self).plan else ("ok", "Summary.")
        if action[0] == "status":
            self.send_response(action[1])
            self.end_headers()
            self.wfile.write(b'{"error": "busy"}')
            return
        if action[0] == "sleep":
            import time

            time.sleep(action[1])
            action = ("ok", "late")
        payload = (b"not json" if action[0] == "garbage" else json.dumps(
            {"choices": [{"message": {"role": "assistant", "content": action[1]}}]}).encode())
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


@pytest.fixture
def stub(tmp_path):
    _Stub.plan, _Stub.seen = [], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def _settings(endpoint, tmp_path, **kw):
    base = dict(endpoint=endpoint, model="tiny-llm", cache_dir=str(tmp_path / "cache"),
                timeout_s=2.0, retries=2, backoff_s=0.01, api_key_env="RV2_TEST_LLM_KEY")
    base.update(kw)
    return LLMSettings(**base)


def test_http_summarizer_request_and_cache(stub, tmp_path, monkeypatch):
    monkeypatch.setenv("RV2_TEST_LLM_KEY", "sekrit")
    _Stub.plan = [("ok", "  Small left effusion.\n No pneumothorax. ")]
    s = HttpSummarizer(_settings(stub, tmp_path))
    assert s.summarize("Long report text.", 70) == "Small left effusion. No pneumothorax."
    req = _Stub.seen[0]
    assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer sekrit"
    assert req["body"]["model"] == "tiny-llm" and req["body"]["temperature"] == 0.0
    assert req["body"]["messages"] == [{"role": "system", "content": PAPER_INSTRUCTION},
                                       {"role": "user", "content": "Long report text."}]
    # Second call: from the disk cache, even in a new instance; no request.
    again = HttpSummarizer(_settings(stub, tmp_path))
    assert again.summarize("Long report text.", 70) == "Small left effusion. No pneumothorax."
    assert len(_Stub.seen) == 1 and again.cache_hits == 1 and again.calls == 0
    # Another model is another cache entry.
    HttpSummarizer(_settings(stub, tmp_path, model="other")).summarize("Long report text.", 70)
    assert len(_Stub.seen) == 2


def test_http_summarizer_retries_then_succeeds(stub, tmp_path):
    _Stub.plan = [("status", 503), ("garbage",), ("ok", "Fine.")]
    s = HttpSummarizer(_settings(stub, tmp_path))
    assert s.summarize("text", 70) == "Fine." and s.calls == 3


def test_http_summarizer_errors(stub, tmp_path):
    _Stub.plan = [("status", 500)] * 3
    with pytest.raises(SummarizerError, match="failed after 3 attempts.*HTTP 500"):
        HttpSummarizer(_settings(stub, tmp_path)).summarize("a", 70)
    _Stub.plan = [("status", 401)]
    with pytest.raises(SummarizerError, match="HTTP 401"):
        HttpSummarizer(_settings(stub, tmp_path)).summarize("b", 70)
    assert len(_Stub.seen) == 4  # a client error is not retried
    _Stub.plan = [("sleep", 1.0)]
    with pytest.raises(SummarizerError, match="failed after 1 attempts"):
        HttpSummarizer(_settings(stub, tmp_path, timeout_s=0.2, retries=0)).summarize("c", 70)
    with pytest.raises(SummarizerError):
        HttpSummarizer(_settings("http://127.0.0.1:9/v1", tmp_path, retries=0)).summarize("d", 70)
    with pytest.raises(ValueError, match="model name"):
        HttpSummarizer(LLMSettings(model=""))


def test_build_records_llm_and_falls_back(stub, tmp_path, make_manifest):
    from rv2.prompts.build import build_prompts
    from rv2.prompts.config import PromptsConfig

    long = " ".join(f"Finding number {i} is a small nodule in the left lung." for i in range(12))
    rows = [{"image_id": f"i{k}", "sex": "M", "age": 50.0, "race": "Asian",
             "impression": long + f" Variant {k}."} for k in range(3)]
    rows.append({"image_id": "short", "sex": "F", "age": 30.0, "race": "Black",
                 "impression": "Normal chest."})
    cfg = PromptsConfig().override([
        "fit.summarizer=llm", f"fit.llm.endpoint={stub}", "fit.llm.model=tiny",
        f"fit.llm.cache_dir={tmp_path / 'c'}", "fit.llm.retries=0", "fit.llm.backoff_s=0"])
    # Row 0: a fitting summary; row 1: an over-long one (rule on the source); row 2: an error.
    _Stub.plan = [("ok", "Multiple small left lung nodules."), ("ok", long), ("status", 500)]
    df, stats = build_prompts(make_manifest(rows), cfg)
    by = df.set_index("image_id")
    assert by.loc["i0", "prompt"] == "50 year old ASIAN male. Multiple small left lung nodules ."
    assert by["shortened_by"].to_dict() == {"i0": "llm", "i1": "rule", "i2": "rule",
                                            "short": "none"}
    assert stats["llm_overlong"] == 1 and stats["llm_errors"] == 1 and stats["llm_calls"] == 3
    assert stats["shortened_by"] == {"none": 1, "rule": 2, "llm": 1}
    assert (df["n_tokens"] <= 77).all() and len(_Stub.seen) == 3
    _Stub.plan = [("status", 500)]
    with pytest.raises(SummarizerError):
        build_prompts(make_manifest(rows[2:3]), cfg.override(["fit.llm.on_error=raise"]))
