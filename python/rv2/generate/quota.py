"""Quota-driven balanced regeneration: `rv2 generate --quota FILE|per-cell=N`.

A quota gives a target number of accepted images per cell: sex x race x age bin,
optionally x finding (a CheXpert label that must be positive in the prompt's row).
An image counts toward every cell it matches. Generation goes in rounds until
every cell has reached its target, or the attempt budget is spent, or a lagging
cell has no prompt left to try. The rules (docs/regeneration-study.md, section 3):

Allocation, at the start of each round, for every cell short of its target:
  - pass rate p: the upper end of the 95% Wilson interval of the cell's pass
    rate so far (1 before its first attempt), at least 0.05; optimistic, so a
    round is not expected to overshoot the target;
  - need = ceil(deficit / p): so a cell with a lower pass rate gets more
    attempts per missing image;
  - when the needs fit in the budget left, each cell gets its need; otherwise
    the round spends half the budget left (at least as many attempts as there
    are lagging cells, at most all of it), one attempt at a time, each to the
    cell whose expected count (accepted + p x attempts given this round) is the
    lowest fraction of its target (ties: cell order; at most its need). A cell
    that fails more thus gets more attempts, until the expected counts are
    level; spending half leaves budget for the next rounds, with better rates.

Candidates of a cell, in this order (seeded by `quota.seed`, deterministic):
  1. further impressions: rows of the prompts table in the cell that no attempt
     has used, ordered by a hash of (seed, prompt_id);
  2. further seeds: the next attempt of the cell's prompts that failed QC and
     have attempts left (`max_attempts` per prompt, as without a quota), in the
     order of 1 then 3;
  3. more age jitter: rows of the same sex and race (and finding) in other age
     bins whose age is within `quota.max_age_shift` years of the cell's bin, re-aged
     into the bin: the new age is drawn uniformly (hash of seed, prompt_id, bin) in
     bin n [age - shift, age + shift] n [the table's youngest, oldest age], and
     written into the prompt's "<age> year old" prefix (rows whose text lacks that
     prefix are not re-aged). Their id is `<prompt_id>-age<new age>`; ordered by a
     hash of (seed, prompt_id, bin).

The executor runs each round's items as they are (no retries inside a round:
the next round's plan takes them), so a round never spends more than the budget
left. Each round's plan is journaled (`quota_rounds.jsonl`, fsynced before it
runs); a resumed run first finishes the last round's items that the store lacks,
then plans the next rounds from the store, so it ends as the uninterrupted run.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import heapq
import json
import logging
import math
import os
import re
from pathlib import Path
from typing import Callable, Iterable, Sequence

from rv2.data.schema import AGE_BINS, CHEXPERT_LABELS, age_bin
from rv2.errors import MissingInputError, UserError
from rv2.files import dumps
from rv2.generate.config import QuotaConfig
from rv2.generate.early_reject import attempt_accounting
from rv2.prompts.checks import PREFIX
from rv2.prompts.template import canonical_race, canonical_sex
from rv2.prompts.tokenizer import MAX_LENGTH, count_tokens_batch

log = logging.getLogger("rv2.generate.quota")

MIN_PASS_RATE = 0.05    # a cell that never passes asks for at most 20 attempts per image
ROUNDS = "quota_rounds.jsonl"
# Whole years of each age bin (`rv2.data.schema.age_bin`: left-closed bins).
BIN_YEARS = {"<18": (0, 17), "18-40": (18, 39), "40-60": (40, 59), "60-80": (60, 79),
             "80+": (80, 120)}
QUOTA_COLUMNS = ("sex", "race", "age_bin", "finding", "target")
_PER_CELL = re.compile(r"^\s*per-cell\s*=\s*(.*?)\s*$")


class QuotaError(UserError):
    """A quota that cannot be used; the message names the input and the fix."""


@dataclasses.dataclass(frozen=True)
class Cell:
    sex: str
    race: str
    age_bin: str
    finding: str | None = None

    @property
    def key(self) -> str:
        return "/".join(x for x in (self.sex, self.race, self.age_bin, self.finding) if x)

    def matches(self, row: dict) -> bool:
        return (row["sex"] == self.sex and row["race"] == self.race
                and row["age_bin"] == self.age_bin
                and (self.finding is None or _positive(row.get(self.finding))))


@dataclasses.dataclass
class Quota:
    targets: dict  # Cell -> target (file or table order)
    source: str

    @property
    def total(self) -> int:
        return sum(self.targets.values())


def _positive(v) -> bool:
    try:
        return float(v) == 1.0
    except (TypeError, ValueError):
        return False


# ---------------------------------------------------------------------------- parsing
def parse_quota(spec: str, rows: Sequence[dict]) -> Quota:
    """`per-cell=N` (every sex x race x age-bin combination of the values the prompts
    table holds) or a CSV file (`read_quota_file`)."""
    m = _PER_CELL.match(str(spec))
    if m:
        n = m.group(1)
        if not re.fullmatch(r"\d+", n):
            raise QuotaError(f"--quota {spec}: per-cell takes a whole number >= 0 of images, "
                             f"e.g. per-cell=100")
        sexes = sorted({r["sex"] for r in rows})
        races = sorted({r["race"] for r in rows})
        bins = [b for b in AGE_BINS if any(r["age_bin"] == b for r in rows)]
        cells = [Cell(s, r, b) for s in sexes for r in races for b in bins]
        return Quota({c: int(n) for c in cells}, f"per-cell={int(n)}")
    return read_quota_file(spec)


def read_quota_file(path) -> Quota:
    """A CSV with a header: sex,race,age_bin[,finding],target (any order). Sex F/M (or
    female/male), race one of the study's four groups, age_bin as the schema writes it,
    finding a CheXpert label (empty: any), target a whole number >= 0; one row a cell."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"quota file not found: {path} (give a CSV with columns "
                                "sex,race,age_bin[,finding],target, or per-cell=N)")
    with open(path, newline="", encoding="utf-8-sig") as f:
        lines = list(csv.reader(f))
    named = f"quota file {path}"
    header = [h.strip().lower() for h in lines[0]] if lines else []
    unknown = [h for h in header if h not in QUOTA_COLUMNS]
    if unknown:
        raise QuotaError(f"{named}: unknown column(s) {unknown}; the columns are "
                         "sex,race,age_bin[,finding],target")
    missing = [c for c in QUOTA_COLUMNS if c != "finding" and c not in header]
    if missing:
        raise QuotaError(f"{named}: missing column(s) {missing} in the header line; the columns "
                         "are sex,race,age_bin[,finding],target")
    if len(set(header)) != len(header):
        raise QuotaError(f"{named}: a column is named twice in the header line {lines[0]}")
    labels = {lab.lower(): lab for lab in CHEXPERT_LABELS}
    targets: dict[Cell, int] = {}
    first_line: dict[Cell, int] = {}
    for n, fields in enumerate(lines[1:], 2):
        if not any(x.strip() for x in fields):
            continue
        where = f"{named} line {n}"
        if len(fields) != len(header):
            raise QuotaError(f"{where}: {len(fields)} field(s), the header has {len(header)}")
        v = {h: x.strip() for h, x in zip(header, fields)}
        sex, race = canonical_sex(v["sex"]), canonical_race(v["race"])
        if sex is None:
            raise QuotaError(f"{where}: column sex: {v['sex']!r} is not F or M")
        if race is None:
            raise QuotaError(f"{where}: column race: {v['race']!r} is not one of Asian, Black, "
                             "Hispanic, White")
        abin = "".join(v["age_bin"].split())
        if abin not in AGE_BINS:
            raise QuotaError(f"{where}: column age_bin: {v['age_bin']!r} is not one of "
                             f"{list(AGE_BINS)}")
        finding = None
        if v.get("finding"):
            finding = labels.get(" ".join(v["finding"].split()).lower())
            if finding is None:
                raise QuotaError(f"{where}: column finding: {v['finding']!r} is not a CheXpert "
                                 "label (e.g. Edema, Pleural Effusion; empty: any)")
        if not re.fullmatch(r"\+?\d+", v["target"]):
            raise QuotaError(f"{where}: column target: {v['target']!r} is not a whole number "
                             ">= 0 of images")
        cell = Cell(sex, race, abin, finding)
        if cell in targets:
            raise QuotaError(f"{where}: the cell {cell.key} is already given on line "
                             f"{first_line[cell]}; give each cell once")
        targets[cell], first_line[cell] = int(v["target"]), n
    if not targets:
        raise QuotaError(f"{named}: no cells (a header line, then one line per cell)")
    return Quota(targets, str(path))


# ---------------------------------------------------------------------------- the rules
def _h(*parts) -> int:
    key = "\0".join(["rv2-quota", *map(str, parts)]).encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big")


def pass_rate_estimate(accepted: int, attempts: int) -> float:
    """The allocation's pass rate of a cell (module doc): the upper end of its 95%
    Wilson interval, 1 before any attempt, at least MIN_PASS_RATE."""
    ci = wilson(accepted, attempts)
    return max(MIN_PASS_RATE, ci[1] if ci else 1.0)


def allocate(targets: dict, accepted: dict, attempts: dict, budget: int) -> dict:
    """Attempts per lagging cell this round (module doc): each its need at the optimistic
    rate when the needs fit in `budget`; else half the budget (at least one attempt per
    lagging cell in all, at most the budget), one attempt at a time to the cell with the
    lowest expected fraction of its target."""
    lag = [c for c in targets if targets[c] > accepted[c]]
    rate = {c: pass_rate_estimate(accepted[c], attempts[c]) for c in lag}
    need = {c: math.ceil((targets[c] - accepted[c]) / rate[c] - 1e-9) for c in lag}
    if sum(need.values()) <= budget:
        return need
    spend = min(budget, max(len(lag), math.ceil(budget / 2)))
    out = dict.fromkeys(lag, 0)
    heap = [(accepted[c] / targets[c], i, c) for i, c in enumerate(lag)]
    heapq.heapify(heap)
    while spend and heap:
        _, i, c = heapq.heappop(heap)
        out[c] += 1
        spend -= 1
        if out[c] < need[c]:
            heapq.heappush(heap, ((accepted[c] + rate[c] * out[c]) / targets[c], i, c))
    return out


def wilson(k: int, n: int, z: float = 1.96) -> list[float] | None:
    if n == 0:
        return None
    p = k / n
    d = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / d
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return [round(max(0.0, mid - half), 4), round(min(1.0, mid + half), 4)]


# ---------------------------------------------------------------------------- candidates
class CandidatePool:
    """Each cell's candidate prompts (module doc); re-aged rows are made when first needed."""

    def __init__(self, quota: Quota, rows: Sequence[dict], qcfg: QuotaConfig,
                 allow_long: bool = False):
        self.quota, self.qcfg, self.allow_long = quota, qcfg, allow_long
        self.rows = {str(r["prompt_id"]): r for r in rows}
        ages = [int(round(float(r["age"]))) for r in rows]
        self.age_range = (min(ages), max(ages)) if ages else (0, 0)
        seed = qcfg.seed
        self._by_sr: dict[tuple, list[str]] = {}
        for p, r in self.rows.items():
            self._by_sr.setdefault((r["sex"], r["race"]), []).append(p)
        self.table: dict[Cell, list[str]] = {}
        for c in quota.targets:
            pids = [p for p in self._by_sr.get((c.sex, c.race), []) if c.matches(self.rows[p])]
            self.table[c] = sorted(pids, key=lambda p: (_h(seed, "order", p), p))
        self._derived: dict[Cell, list[str]] = {}

    def derived(self, c: Cell) -> list[str]:
        """The cell's re-aged candidates (made, and added to `rows`, on first call)."""
        if c in self._derived:
            return self._derived[c]
        seed, shift = self.qcfg.seed, self.qcfg.max_age_shift
        blo, bhi = BIN_YEARS[c.age_bin]
        amin, amax = self.age_range
        made = []
        for pid in self._by_sr.get((c.sex, c.race), []):
            r = self.rows[pid]
            if (r["age_bin"] == c.age_bin
                    or (c.finding is not None and not _positive(r.get(c.finding)))):
                continue
            a = int(round(float(r["age"])))
            lo, hi = max(blo, a - shift, amin), min(bhi, a + shift, amax)
            m = PREFIX.match(str(r["prompt"]))
            if lo > hi or m is None:
                continue
            age = lo + _h(seed, "age", pid, c.age_bin) % (hi - lo + 1)
            new_id = f"{pid}-age{age}"
            if new_id in self.rows and self.rows[new_id].get("quota_reaged_from") != pid:
                continue  # the table already uses this id for another prompt
            text = r["prompt"][:m.start(1)] + str(age) + r["prompt"][m.end(1):]
            made.append((_h(seed, "reage", pid, c.age_bin), new_id,
                         {**r, "prompt_id": new_id, "prompt": text, "age": age,
                          "age_bin": age_bin(age), "quota_reaged_from": pid}))
        if made and not self.allow_long:
            n = count_tokens_batch([m[2]["prompt"] for m in made])
            made = [m for m, k in zip(made, n) if k <= MAX_LENGTH]
        made.sort(key=lambda m: (m[0], m[1]))
        for _, new_id, row in made:
            self.rows.setdefault(new_id, row)
        self._derived[c] = [m[1] for m in made]
        return self._derived[c]

    def derive_all(self) -> None:
        for c in self.quota.targets:
            self.derived(c)

    def cells_of(self, pid: str) -> list[Cell]:
        r = self.rows.get(pid)
        return [c for c in self.quota.targets if c.matches(r)] if r is not None else []


# ---------------------------------------------------------------------------- the loop
class QuotaLoop:
    """Plans and runs the rounds of a quota run over an open store (module doc).

    `bases` is the runner's prompt_id -> base record map; `make_base(row)` builds one
    for a re-aged row before it is scheduled."""

    def __init__(self, quota: Quota, qcfg: QuotaConfig, rows: Sequence[dict], store,
                 bases: dict, make_base: Callable[[dict], dict], max_attempts: int,
                 allow_long: bool = False):
        self.quota, self.store, self.bases = quota, store, bases
        self.make_base, self.max_attempts = make_base, max_attempts
        self.pool = CandidatePool(quota, rows, qcfg, allow_long)
        self.budget = qcfg.budget_attempts or max_attempts * quota.total
        self.stop_reason: str | None = None
        self.rounds = 0
        self._path = Path(store.root) / ROUNDS
        if any(r["prompt_id"] not in self.pool.rows for r in store.records):
            self.pool.derive_all()   # re-aged prompts of an earlier run: know their cells
        self._cells: dict[str, list[Cell]] = {}
        self.attempts = dict.fromkeys(quota.targets, 0)
        self.accepted = dict.fromkeys(quota.targets, 0)
        self.early = dict.fromkeys(quota.targets, 0)   # attempts stopped by early rejection
        for r in store.records:
            self._count(r)
        self.bar = None

    def _cells_of(self, pid: str) -> list[Cell]:
        if pid not in self._cells:
            self._cells[pid] = self.pool.cells_of(pid)
        return self._cells[pid]

    def _count(self, rec: dict) -> None:
        ok = bool(rec.get("qc_pass"))
        early = attempt_accounting([rec])["early_stopped"]
        for c in self._cells_of(rec["prompt_id"]):
            self.attempts[c] += 1
            self.accepted[c] += ok
            self.early[c] += early

    def deficit(self, c: Cell) -> int:
        return max(0, self.quota.targets[c] - self.accepted[c])

    # -------------------------------------------------------------- candidates
    def _pick(self, c: Cell, n: int, taken: set) -> list[tuple[str, int]]:
        store, out = self.store, []

        def fresh(pids: Iterable[str]) -> bool:
            for pid in pids:
                if len(out) >= n:
                    return True
                if pid not in store.last_attempt and pid not in taken:
                    out.append((pid, 0))
                    taken.add(pid)
            return len(out) >= n

        if n <= 0 or fresh(self.pool.table[c]):
            return out
        started = self.pool.table[c] + self.pool._derived.get(c, [])
        for pid in started:   # further seeds of failed prompts
            if len(out) >= n:
                return out
            if (pid in store.last_attempt and pid not in store.accepted and pid not in taken
                    and store.next_attempt(pid) < self.max_attempts):
                out.append((pid, store.next_attempt(pid)))
                taken.add(pid)
        fresh(self.pool.derived(c))
        return out

    def plan(self) -> tuple[list[tuple[str, int]], dict]:
        """The next round's items and per-cell allocation; [] with `stop_reason` set when
        the run is over."""
        lagging = [c for c in self.quota.targets if self.deficit(c) > 0]
        remaining = self.budget - len(self.store.records)
        if not lagging:
            self.stop_reason = "targets met"
            return [], {}
        if remaining <= 0:
            self.stop_reason = "budget spent"
            return [], {}
        active = [c for c in lagging if self._pick(c, 1, set())]
        if not active:
            self.stop_reason = "no prompts left for the lagging cells"
            return [], {}
        alloc = allocate({c: self.quota.targets[c] for c in active}, self.accepted,
                         self.attempts, remaining)
        items, taken = [], set()
        for c in active:
            items += self._pick(c, alloc.get(c, 0), taken)
        return items, {c.key: {"allocated": alloc.get(c, 0), "deficit": self.deficit(c),
                               "accepted": self.accepted[c], "attempts": self.attempts[c]}
                       for c in active}

    # -------------------------------------------------------------- rounds journal
    def _read_rounds(self) -> list[dict]:
        if not self._path.is_file():
            return []
        data = self._path.read_bytes()
        cut = data.rfind(b"\n") + 1
        if cut != len(data):   # a torn last line: that round never started
            with open(self._path, "r+b") as f:
                f.truncate(cut)
                os.fsync(f.fileno())
        return [json.loads(x) for x in data[:cut].splitlines() if x.strip()]

    def _journal(self, items, alloc) -> None:
        line = dumps({"round": self.rounds, "budget": self.budget, "items": items,
                      "cells": alloc}).encode() + b"\n"
        fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def _leftover(self) -> list[tuple[str, int]]:
        """The last journaled round's items the store lacks (an interrupted round)."""
        rounds = self._read_rounds()
        self.rounds = len(rounds)
        if not rounds:
            return []
        todo = []
        for pid, attempt in rounds[-1]["items"]:
            if self.store.last_attempt.get(pid, -1) >= attempt:
                continue
            if pid not in self.pool.rows:
                self.pool.derive_all()
            if pid in self.pool.rows and self.store.next_attempt(pid) == attempt:
                todo.append((pid, attempt))
        return todo[:max(0, self.budget - len(self.store.records))]

    # -------------------------------------------------------------- running
    def run(self, executor, runner, on_result: Callable[[dict, bool], None] | None = None,
            bar=None) -> None:
        """Rounds until the targets are met, the budget is spent or no candidate is left.
        `on_result(record, final)` as for `Executor.run`; raising in it stops the run."""
        self.bar = bar
        self._show()

        def on_rec(rec: dict, _final: bool) -> None:
            self._count(rec)
            self._show()
            if on_result is not None:
                on_result(rec, bool(rec["qc_pass"]) or int(rec["attempt"]) + 1 >= self.max_attempts)

        items = self._leftover()
        while True:
            if items:
                for pid, _ in items:
                    if pid not in self.bases:
                        self.bases[pid] = self.make_base(self.pool.rows[pid])
                # max_attempts=1: the executor retries nothing; the next plan does
                executor.run(runner, items, 1, on_rec)
            items, alloc = self.plan()
            if not items:
                break
            self._journal(items, alloc)
            self.rounds += 1
        log.info("quota: %s after %d round(s)", self.stop_reason, self.rounds)

    def _show(self) -> None:
        if self.bar is None:
            return
        met = sum(1 for c in self.quota.targets if self.deficit(c) == 0)
        filled = sum(min(self.accepted[c], t) for c, t in self.quota.targets.items())
        self.bar.update(filled - self.bar.n)   # redraws at most every mininterval
        worst = sorted((c for c in self.quota.targets if self.deficit(c) > 0),
                       key=lambda c: (self.accepted[c] / max(1, self.quota.targets[c]), c.key))[:3]
        self.bar.set_postfix({
            "cells": f"{met}/{len(self.quota.targets)}",
            "att": f"{len(self.store.records)}/{self.budget}",
            "lag": " ".join(f"{c.key}:{self.accepted[c]}/{self.quota.targets[c]}" for c in worst)
            or "-"}, refresh=False)

    # -------------------------------------------------------------- report
    def report(self) -> dict:
        recs = self.store.records
        cells = []
        for c, t in self.quota.targets.items():
            a, n = self.accepted[c], self.attempts[c]
            used = [p for p in self.pool.table[c] if p in self.store.last_attempt]
            reaged = [p for p in self.pool._derived.get(c, []) if p in self.store.last_attempt]
            cells.append({"cell": c.key, "sex": c.sex, "race": c.race, "age_bin": c.age_bin,
                          "finding": c.finding, "target": t, "accepted": a,
                          "missing": max(0, t - a), "surplus": max(0, a - t),
                          "attempts": n, "failed_attempts": n - a - self.early[c],
                          "early_stopped_attempts": self.early[c],
                          "pass_rate": round(a / n, 4) if n else None,
                          "pass_rate_ci95": wilson(a, n),
                          "prompts_used": {"table": len(used), "re_aged": len(reaged)},
                          "table_prompts": len(self.pool.table[c])})
        missed = [x for x in cells if x["missing"] > 0]
        return {"targets": self.quota.source, "stop_reason": self.stop_reason,
                "budget_attempts": self.budget, "attempts_used": len(recs),
                "rounds": self.rounds, "cells_total": len(cells),
                "cells_met": len(cells) - len(missed),
                "images_missing": sum(x["missing"] for x in missed),
                "missed": [{k: x[k] for k in ("cell", "target", "accepted", "missing", "attempts",
                                             "pass_rate", "pass_rate_ci95")} for x in missed],
                "accounting": {k: v for k, v in attempt_accounting(recs).items()
                               if k in ("attempts", "accepted", "failed", "early_stopped")},
                "cells": cells}


def format_report(q: dict) -> str:
    """The quota part of `rv2 generate`'s printed report."""
    lines = [f"quota {q['targets']}: {q['cells_met']}/{q['cells_total']} cells at target; "
             f"stopped: {q['stop_reason']}; {q['attempts_used']}/{q['budget_attempts']} attempts "
             f"in {q['rounds']} round(s)"]
    if q["missed"]:
        lines.append(f"missed target ({q['images_missing']} image(s) short):")
        lines.append(f"  {'cell':<32} {'target':>6} {'got':>5} {'short':>5} {'attempts':>8} "
                     f"{'pass rate (95% CI)':>22}")
        for x in q["missed"]:
            ci = x["pass_rate_ci95"]
            rate = (f"{x['pass_rate']:.2f} ({ci[0]:.2f}-{ci[1]:.2f})" if ci else "-")
            lines.append(f"  {x['cell']:<32} {x['target']:>6} {x['accepted']:>5} "
                         f"{x['missing']:>5} {x['attempts']:>8} {rate:>22}")
    return "\n".join(lines)


def load_quota(qcfg: QuotaConfig, rows: Sequence[dict]) -> Quota | None:
    """The run's quota (None without `quota.targets`)."""
    return parse_quota(qcfg.targets, rows) if qcfg.targets else None


__all__ = ["Cell", "Quota", "QuotaError", "QuotaLoop", "CandidatePool", "allocate",
           "pass_rate_estimate", "parse_quota", "read_quota_file", "load_quota", "format_report",
           "BIN_YEARS", "ROUNDS"]
