"""Fitting an impression into a token budget: `summarize(text, max_tokens) -> text`.

`max_tokens` counts as `count_tokens` does (start and end tokens included).

- `RuleShortener`: deterministic, offline. Drops boilerplate (notifications,
  recommendations, comparison and technique remarks) and then the least
  informative sentences, later ones first; only if one sentence alone is still
  too long, drops its trailing clauses and finally trailing words. It never cuts
  a word, never leaves a negation ("no", "without") stranded without its
  finding, and always fits (an empty string when not even one word fits).
- `HttpSummarizer`: an OpenAI-compatible chat-completions endpoint with the
  paper's instruction; stdlib only, with a timeout, retries and a disk cache.
  Its output is not guaranteed to fit: the caller checks (see build.py).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Literal, Protocol

from rv2.data.report_sections import normalize_whitespace
from rv2.errors import RV2Error, UserError
from rv2.files import atomic_write_text
from rv2.prompts.template import split_sentences
from rv2.prompts.tokenizer import count_tokens

log = logging.getLogger(__name__)

PAPER_INSTRUCTION = ("Your task is to summarize this radiology report within 200 characters or "
                     "less. Your response must be concise, truthful, and keep all relevant medical "
                     "information.")


class Summarizer(Protocol):
    name: str

    def summarize(self, text: str, max_tokens: int) -> str: ...


class SummarizerError(RV2Error, RuntimeError):
    """The summarizer could not produce a summary (network, HTTP or format error)."""


# ------------------------------------------------------------------ rule-based

# Sentences that carry no finding: who was told what, what to do next, how the
# study was done, what it was compared with.
_BOILERPLATE = re.compile(
    r"\b(?:notif(?:y|ied|ication)|discussed|communicated|telephone|phone|paged|called|informed|"
    r"acknowledged|read ?back|veriphy|made aware|critical result|was contacted|"
    r"recommend(?:ed|ation)?s?|suggest(?:ed)? (?:clinical )?correlation|clinical correlation|"
    r"follow[- ]?up|further evaluation|could be (?:considered|obtained)|consider|if clinically|"
    r"comparison|compared|previous|prior (?:study|exam|radiograph|film)s?|"
    r"technique|portable|views? (?:were|was) obtained|images?|limited (?:study|exam(?:ination)?)|"
    r"total images)\b", re.IGNORECASE)
# Words naming a finding or a device: a sentence with them informs the image.
_FINDING = re.compile(
    r"\b(?:effusions?|pneumothora(?:x|ces)|consolidations?|edema|cardiomegaly|enlarge(?:d|ment)|"
    r"opacit(?:y|ies)|atelecta(?:sis|tic)|pneumonia|fractures?|nodul(?:e|es|ar)|mass(?:es)?|"
    r"lesions?|infiltrat(?:e|es|ion)|tubes?|lines?|catheters?|pacemaker|devices?|wires?|clips?|"
    r"emphysema(?:tous)?|fibrosis|fibrotic|granulom(?:a|as|atous)|hernia|congestion|"
    r"hyperinflat(?:ed|ion)|scarring|thickening|calcifi(?:ed|cation|cations)|cardiac|heart|"
    r"mediastin(?:um|al)|hilar|lungs?|pleura[l]?|airspace|interstitial|copd|collapse|"
    r"kyphosis|scoliosis|degenerative|osteopenia|aort(?:a|ic)|sternotomy|"
    r"acute|normal|clear|unremarkable|negative|stable|unchanged|new|worse(?:ning)?|improv(?:ed|ing))\b",
    re.IGNORECASE)
_SUMMARY = re.compile(r"\bno (?:evidence of )?(?:acute|active)\b|\bnormal (?:chest|study|exam)\b",
                      re.IGNORECASE)
# Words that must not end a shortened text (a negation without its finding,
# a dangling article, preposition or conjunction).
_DANGLING = {
    "no", "not", "without", "negative", "free", "absent", "neither", "nor", "evidence", "of", "for",
    "and", "or", "but", "with", "the", "a", "an", "to", "in", "on", "at", "by", "from", "is",
    "are", "was", "were", "be", "as", "than", "which", "that", "this", "these", "may", "could",
    "possible", "probable", "likely", "versus", "vs", "vs.", "left", "right", "bilateral", "mild",
    "moderate", "small", "large", "new", "there", "also", "including", "into", "over", "under",
    "suggest", "suggests", "suggesting", "concerning", "consistent", "compatible", "represent",
}
_LEADIN = re.compile(r"^(?:(?:as )?compared (?:to|with)|in comparison (?:to|with)|since)\b[^,]{0,80},\s*",
                     re.IGNORECASE)
_THERE_IS = re.compile(r"^there (?:is|are) ", re.IGNORECASE)


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:] if s else s


def _end(s: str) -> str:
    s = s.rstrip(" ,;:")
    return s if s.endswith((".", "?", "!")) else s + "."


def _compact(sentence: str) -> str:
    """Meaning-preserving cuts: "There is no X" -> "No X"; a leading comparison clause."""
    s = _LEADIN.sub("", sentence)
    s = _THERE_IS.sub("", s)
    return _cap(s) if s else sentence


def sentence_score(sentence: str, index: int) -> float:
    """Higher = more informative. Boilerplate scores below any finding."""
    findings = len(_FINDING.findall(sentence))
    score = 2.0 * min(findings, 4) + (3.0 if _SUMMARY.search(sentence) else 0.0)
    if _BOILERPLATE.search(sentence) and findings <= 1:
        score -= 10.0
    if index == 0:
        score += 2.0  # the lead sentence of an impression is its headline
    return score - 0.1 * index


def _trim(sentence: str, fits, words: bool = True) -> str:
    """Drop trailing clauses, then (if `words`) trailing words, until `fits`;
    never end on a dangling word. "" when nothing fits."""
    core = sentence.rstrip(" .")
    clauses = re.split(r"(?<=[,;])\s+", core)
    while len(clauses) > 1 and not fits(_end(" ".join(clauses))):
        clauses.pop()
    if not words:
        cand = _end(" ".join(clauses))
        return cand if fits(cand) else ""
    tokens = " ".join(clauses).rstrip(",;").split(" ")
    while tokens:
        while tokens and tokens[-1].lower().strip(",;:()") in _DANGLING:
            tokens.pop()
        if not tokens:
            break
        cand = _end(" ".join(tokens))
        if fits(cand):
            return cand
        tokens.pop()
    return ""


@dataclasses.dataclass
class RuleShortener:
    """Deterministic shortener; see the module docstring."""

    name: str = "rule"

    def summarize(self, text: str, max_tokens: int) -> str:
        text = normalize_whitespace(text)
        if count_tokens(text) <= max_tokens:
            return text

        def fits(s: str) -> bool:
            return count_tokens(s) <= max_tokens

        sentences = [_end(_compact(s)) for s in split_sentences(text)]
        if not sentences:
            return ""
        scores = [sentence_score(s, i) for i, s in enumerate(sentences)]
        chosen = {i: s for i, s in enumerate(sentences)}

        def joined(d: dict[int, str]) -> str:
            return " ".join(d[i] for i in sorted(d))

        if fits(joined(chosen)):
            return joined(chosen)
        # Drop the least informative first; among equals the later sentence.
        order = sorted(chosen, key=lambda i: (scores[i], -i))
        for i in order[:-1]:
            del chosen[i]
            if fits(joined(chosen)):
                break
        else:
            (only,) = chosen
            return _trim(sentences[only], fits)
        # Refill the room left: dropped sentences back whole where they fit,
        # else their leading clauses (boilerplate never comes back trimmed).
        for i in sorted(set(range(len(sentences))) - set(chosen), key=lambda i: (-scores[i], i)):
            trial = dict(chosen)
            trial[i] = sentences[i]
            if fits(joined(trial)):
                chosen = trial
            elif scores[i] > 0:
                rest = dict(chosen)
                part = _trim(sentences[i], lambda s, r=rest, k=i: fits(joined({**r, k: s})), words=False)
                if part:
                    chosen[i] = part
        return joined(chosen)


# ----------------------------------------------------------------- HTTP (LLM)

@dataclasses.dataclass
class LLMSettings:
    """An OpenAI-compatible chat-completions endpoint (e.g. a local vLLM server)."""

    endpoint: str = "http://127.0.0.1:8000/v1"
    model: str = ""
    # Name of the environment variable holding the API key (never the key itself).
    api_key_env: str = "OPENAI_API_KEY"
    instruction: str = PAPER_INSTRUCTION
    temperature: float = 0.0
    max_output_tokens: int = 128
    timeout_s: float = 60.0
    retries: int = 3
    backoff_s: float = 1.0
    # Empty: ~/.cache/rv2/llm-summaries.
    cache_dir: str = ""
    # What to do when the endpoint fails after its retries: use the rule shortener, or stop.
    on_error: Literal["fallback", "raise"] = "fallback"


class HttpSummarizer:
    """Summaries from an OpenAI-compatible endpoint, cached on disk by request content."""

    name = "llm"

    def __init__(self, settings: LLMSettings | None = None):
        self.s = settings or LLMSettings()
        if not self.s.model:
            raise UserError("the LLM summarizer needs a model name: set fit.llm.model")
        self.cache_dir = Path(self.s.cache_dir or Path.home() / ".cache" / "rv2" / "llm-summaries")
        self.calls = 0
        self.cache_hits = 0

    def _key(self, text: str) -> str:
        blob = json.dumps([self.s.endpoint.rstrip("/"), self.s.model, self.s.instruction,
                           self.s.temperature, text], ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()

    def _cache_file(self, key: str) -> Path:
        return self.cache_dir / key[:2] / f"{key}.json"

    def _request(self, text: str) -> str:
        url = self.s.endpoint.rstrip("/") + "/chat/completions"
        body = json.dumps({
            "model": self.s.model, "temperature": self.s.temperature,
            "max_tokens": self.s.max_output_tokens,
            "messages": [{"role": "system", "content": self.s.instruction},
                         {"role": "user", "content": text}],
        }).encode()
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.s.api_key_env, "") if self.s.api_key_env else ""
        if key:
            headers["Authorization"] = f"Bearer {key}"
        last: Exception | None = None
        for attempt in range(self.s.retries + 1):
            if attempt:
                time.sleep(self.s.backoff_s * 2 ** (attempt - 1))
            try:
                self.calls += 1
                req = urllib.request.Request(url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.s.timeout_s) as resp:
                    payload = json.loads(resp.read().decode("utf-8"))
            except urllib.error.HTTPError as exc:
                detail = exc.read()[:300].decode("utf-8", "replace")
                last = SummarizerError(f"{url}: HTTP {exc.code}: {detail}")
                if exc.code not in (408, 409, 425, 429) and exc.code < 500:
                    raise last from exc  # a client error will not heal by retrying
                continue
            except (urllib.error.URLError, TimeoutError, OSError) as exc:
                last = SummarizerError(f"{url}: {getattr(exc, 'reason', exc)}")
                continue
            except json.JSONDecodeError as exc:
                last = SummarizerError(f"{url}: response is not JSON: {exc}")
                continue
            try:
                content = payload["choices"][0]["message"]["content"]
            except (KeyError, IndexError, TypeError) as exc:
                raise SummarizerError(f"{url}: no choices[0].message.content in the response: "
                                      f"{str(payload)[:200]}") from exc
            if not isinstance(content, str) or not content.strip():
                raise SummarizerError(f"{url}: empty summary returned")
            return normalize_whitespace(content)
        raise SummarizerError(f"{url}: failed after {self.s.retries + 1} attempts: {last}")

    def summarize(self, text: str, max_tokens: int) -> str:
        text = normalize_whitespace(text)
        key = self._key(text)
        path = self._cache_file(key)
        if path.is_file():
            try:
                self.cache_hits += 1
                return json.loads(path.read_text())["summary"]
            except (json.JSONDecodeError, KeyError):
                log.warning("ignoring a corrupt summary cache entry %s", path)
        summary = self._request(text)
        atomic_write_text(path, json.dumps({"model": self.s.model, "text": text,
                                            "summary": summary}, ensure_ascii=False))
        return summary


def make_summarizer(kind: str, llm: LLMSettings | None = None) -> Summarizer:
    if kind == "rule":
        return RuleShortener()
    if kind == "llm":
        return HttpSummarizer(llm)
    raise UserError(f"summarizer must be 'rule' or 'llm', got {kind!r}")
