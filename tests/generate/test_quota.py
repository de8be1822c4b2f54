"""Quota-driven regeneration: quota files, the allocation and candidate rules, and the
loop on a tiny model (stops at the targets or the budget, accounting, resume)."""
from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from rv2.data.schema import AGE_BINS, age_bin
from rv2.errors import UserError
from rv2.generate.config import GenerateConfig, QuotaConfig
from rv2.generate.quota import (
    BIN_YEARS,
    ROUNDS,
    CandidatePool,
    Cell,
    QuotaError,
    allocate,
    parse_quota,
    pass_rate_estimate,
    read_quota_file,
)
from rv2.prompts.checks import check_generation_prompts, parse_prefix
from rv2.testing.prompts import prompts_table


def _rows(n=32, seed=0):
    df = prompts_table(n, seed=seed)
    return df.to_dict("records")


# ---------------------------------------------------------------------------- quota files
def _write(tmp_path, text, name="q.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_quota_file_reads_cells_and_spellings(tmp_path):
    q = read_quota_file(_write(tmp_path, "race,sex,age_bin,finding,target\n"
                                         "ASIAN,female,60-80,,10\n"
                                         "White, M ,80 +,pleural effusion,3\n\n"
                                         "Black,F,18-40,,0\n"))
    assert q.targets == {Cell("F", "Asian", "60-80"): 10,
                         Cell("M", "White", "80+", "Pleural Effusion"): 3,
                         Cell("F", "Black", "18-40"): 0}
    assert q.total == 13 and Cell("M", "White", "80+", "Pleural Effusion").key == \
        "M/White/80+/Pleural Effusion"


@pytest.mark.parametrize("text, match", [
    ("sex,race,age_bin,target\nX,Asian,60-80,1\n", r"line 2: column sex: 'X' is not F or M"),
    ("sex,race,age_bin,target\nF,Martian,60-80,1\n", r"line 2: column race: 'Martian'"),
    ("sex,race,age_bin,target\nF,Other,60-80,1\n", r"line 2: column race: 'Other'"),
    ("sex,race,age_bin,target\nF,Asian,60-70,1\n", r"line 2: column age_bin: '60-70' is not one of"),
    ("sex,race,age_bin,target\nF,Asian,60-80,-1\n", r"line 2: column target: '-1' is not a whole"),
    ("sex,race,age_bin,target\nF,Asian,60-80,2.5\n", r"line 2: column target: '2.5'"),
    ("sex,race,age_bin,target\nF,Asian,60-80,1\nM,Asian,60-80,1\nfemale,ASIAN,60-80,4\n",
     r"line 4: the cell F/Asian/60-80 is already given on line 2"),
    ("sex,race,age_bin,finding,target\nF,Asian,60-80,Flu,1\n", r"line 2: column finding: 'Flu'"),
    ("sex,race,age,target\nF,Asian,60,1\n", r"unknown column\(s\) \['age'\]"),
    ("sex,race,target\nF,Asian,1\n", r"missing column\(s\) \['age_bin'\]"),
    ("sex,race,age_bin,target\nF,Asian,60-80\n", r"line 2: 3 field\(s\), the header has 4"),
    ("sex,race,age_bin,target\n", r"no cells"),
    ("", r"missing column"),
])
def test_quota_file_errors_name_line_and_column(tmp_path, text, match):
    with pytest.raises(QuotaError, match=match) as e:
        read_quota_file(_write(tmp_path, text))
    assert "\n" not in str(e.value) and str(tmp_path / "q.csv") in str(e.value)


def test_quota_spec_per_cell_and_missing_file(tmp_path):
    rows = _rows(32)
    q = parse_quota("per-cell=5", rows)
    bins = [b for b in AGE_BINS if any(r["age_bin"] == b for r in rows)]
    assert len(q.targets) == 2 * 4 * len(bins) and set(q.targets.values()) == {5}
    assert q.source == "per-cell=5"
    for bad in ("per-cell=-2", "per-cell=x", "per-cell="):
        with pytest.raises(QuotaError, match="whole number"):
            parse_quota(bad, rows)
    with pytest.raises(UserError, match="quota file not found"):
        parse_quota(str(tmp_path / "none.csv"), rows)


def test_config_checks_quota_settings():
    cfg = GenerateConfig()
    cfg.quota.budget_attempts = 0
    with pytest.raises(UserError, match="budget_attempts"):
        cfg.validate()
    cfg = GenerateConfig()
    cfg.quota.max_age_shift = -1
    with pytest.raises(UserError, match="max_age_shift"):
        cfg.validate()


# ---------------------------------------------------------------------------- rules
def test_bins_agree_with_schema():
    for b, (lo, hi) in BIN_YEARS.items():
        assert age_bin(lo) == b and age_bin(hi) == b
    assert list(BIN_YEARS) == list(AGE_BINS)


def test_allocation_gives_low_pass_rates_more_and_respects_the_budget():
    a, b, c = "a", "b", "c"
    t = {a: 8, b: 8, c: 8}
    # measured: a passes 4/4, b 2/4, c 1/4; each still needs 4 images
    acc, att = {a: 4, b: 4, c: 4}, {a: 4, b: 8, c: 16}
    ample = allocate(t, acc, att, 1000)
    assert ample == {c_: math.ceil(4 / pass_rate_estimate(acc[c_], att[c_])) for c_ in t}
    assert ample[a] == 4 < ample[b] < ample[c]      # optimistic rates: a at 1.0
    assert allocate({**t, b: 4}, acc, att, 1000).keys() == {a, c}   # b is at target
    assert sum(ample.values()) == 19
    # the budget binds (18 < 19): half of it, to level the expected counts; c fails most
    tight = allocate(t, acc, att, 18)
    assert sum(tight.values()) == 9 and tight[c] > tight[b] > tight[a]
    r = {k: pass_rate_estimate(acc[k], att[k]) for k in t}
    exp = {k: acc[k] + r[k] * tight[k] for k in t}
    assert max(exp.values()) - min(exp.values()) <= max(r.values())   # level within one attempt
    assert sum(allocate(t, acc, att, 2).values()) == 2   # never over the budget
    assert sum(allocate(t, acc, att, 4).values()) == 3   # half of 4, but one per lagging cell
    # before any attempt: every cell its deficit (rate 1), or equal shares
    fresh = dict.fromkeys(t, 0)
    assert allocate(t, fresh, fresh, 1000) == t
    assert allocate(t, fresh, fresh, 18) == dict.fromkeys(t, 3)
    # the estimate: optimistic (upper 95% Wilson bound), 1 before any attempt, bounded below
    assert pass_rate_estimate(0, 0) == 1.0
    assert pass_rate_estimate(0, 1000) == 0.05
    assert 0.5 < pass_rate_estimate(5, 10) < 0.85
    assert pass_rate_estimate(10, 10) == 1.0


def test_candidates_are_seeded_and_reaged_rows_stay_in_bin_and_shift():
    rows = _rows(32)
    q = parse_quota("per-cell=3", rows)
    qcfg = QuotaConfig(max_age_shift=10, seed=7)
    pool = CandidatePool(q, rows, qcfg)
    again = CandidatePool(q, list(reversed(rows)), qcfg)   # row order does not matter
    other = CandidatePool(q, rows, QuotaConfig(max_age_shift=10, seed=8))
    assert pool.table == again.table
    for c in q.targets:
        assert set(pool.table[c]) == {r["prompt_id"] for r in rows if c.matches(r)}
        assert pool.derived(c) == again.derived(c)
    multi = [c for c in q.targets if len(pool.table[c]) > 2]
    assert any(pool.table[c] != other.table[c] for c in multi)  # the seed orders them
    made = [pool.rows[p] for c in q.targets for p in pool.derived(c)]
    assert made, "some rows are within 10 years of another bin"
    src = {r["prompt_id"]: r for r in rows}
    amin, amax = min(r["age"] for r in rows), max(r["age"] for r in rows)
    for c in q.targets:
        for p in pool.derived(c):
            r, s = pool.rows[p], src[pool.rows[p]["quota_reaged_from"]]
            assert c.matches(r) and r["age_bin"] != s["age_bin"]
            assert abs(r["age"] - s["age"]) <= 10 and amin <= r["age"] <= amax
            assert p == f"{s['prompt_id']}-age{r['age']}"
            assert parse_prefix(r["prompt"]) == (r["age"], r["race"], r["sex"])
            assert r["prompt"].split(".", 1)[1] == s["prompt"].split(".", 1)[1]
    # the re-aged rows pass the generation checks (text agrees with the columns)
    check_generation_prompts(pd.DataFrame(made), "re-aged")
    # no shift: nothing to re-age; a prompt without the prefix is never re-aged
    none = CandidatePool(q, rows, QuotaConfig(max_age_shift=0))
    assert all(none.derived(c) == [] for c in q.targets)
    plain = [{**r, "prompt": "No acute process ."} for r in rows]
    assert all(CandidatePool(q, plain, qcfg).derived(c) == [] for c in q.targets)


# ---------------------------------------------------------------------------- the loop
torch = pytest.importorskip("torch")


def _cfg(**kw):
    cfg = GenerateConfig()
    cfg.sampler.steps = 2
    cfg.sampler.guidance = 1.0          # no CFG: half the UNet work
    cfg.sampler.device = "cpu"
    cfg.qc.age_tolerance = 100.0        # HashQC reads ages at random: judge sex and race only
    cfg.batch_size = kw.pop("batch_size", 8)
    cfg.max_attempts = kw.pop("max_attempts", 4)
    for k, v in kw.items():
        setattr(cfg.quota, k, v)
    return cfg


class HashQC:
    """A QC stand-in that reads each image by a hash of its pixels: female half the
    time, each of its three races a third, so a cell's pass rate is set by its race
    (about 1/6; Hispanic, whose race QC does not judge, 1/2), as a real QC that fails
    some groups more often, and the same image always gets the same verdict."""

    model_id, model_hash, convention = "hash-qc", "hashqc", "xrv"

    def predict(self, images):
        import hashlib

        import numpy as np

        h = [hashlib.sha256(np.round(x, 2).tobytes()).digest()
             for x in images.detach().float().cpu().numpy()]
        return {"p_female": np.array([d[0] / 255 for d in h]),
                "race_probs": np.eye(3)[[d[1] % 3 for d in h]],
                "age": np.array([20.0 + d[2] % 71 for d in h])}


@pytest.fixture(scope="module")
def comp():
    from rv2.testing.sd import tiny_components

    torch.set_num_threads(1)
    return tiny_components(seed=0, sample_size=16)   # 8 x 8 latents: fast


def _run(df, out, cfg, comp, qc, executor=None):
    from rv2.generate.pipeline import generate_dataset

    return generate_dataset(df, None, out, cfg, qc_models=qc, components=comp, progress=False,
                            executor=executor)


def _check_accounting(s, out):
    q = s["quota"]
    log = pd.read_parquet(out / "qc_log.parquet")
    acc = q["accounting"]
    assert acc["attempts"] == acc["accepted"] + acc["failed"] + acc["early_stopped"] == len(log)
    assert acc["accepted"] == int(log["qc_pass"].sum()) == s["accepted"]
    assert q["attempts_used"] == s["attempts_total"] == len(log)
    assert not log.duplicated(["prompt_id", "attempt"]).any()
    man = pd.read_parquet(out / "manifest.parquet")
    for x in q["cells"]:
        assert x["attempts"] == x["accepted"] + x["failed_attempts"] + x["early_stopped_attempts"]
        c = Cell(x["sex"], x["race"], x["age_bin"], x["finding"])
        got = sum(1 for r in man.to_dict("records") if c.matches(r))
        assert got == x["accepted"], x["cell"]
        assert x["missing"] == max(0, x["target"] - got)
    # every attempt keeps its prompt's attempt order (no gaps, none twice)
    for _, g in log.groupby("prompt_id"):
        assert sorted(g["attempt"]) == list(range(len(g)))
    return log, man


QUOTA = ("sex,race,age_bin,target\nF,Asian,40-60,2\nM,Hispanic,60-80,3\nF,White,18-40,1\n"
         "M,White,80+,1\n")


def test_quota_loop_stops_at_the_targets(tmp_path, comp):
    df = prompts_table(96, seed=1)
    (tmp_path / "q.csv").write_text(QUOTA)
    cfg = _cfg(targets=str(tmp_path / "q.csv"), budget_attempts=300, max_age_shift=30)
    out = tmp_path / "s"
    s = _run(df, out, cfg, comp, HashQC())
    q = s["quota"]
    log, man = _check_accounting(s, out)
    assert q["stop_reason"] == "targets met" and q["cells_met"] == q["cells_total"] == 4
    assert q["missed"] == [] and q["attempts_used"] < 300 and q["rounds"] >= 2
    rounds = [json.loads(x) for x in (out / ROUNDS).read_text().splitlines()]
    assert sum(len(r["items"]) for r in rounds) == len(log)
    # each round is for cells short of target, with at least their deficit in attempts
    for r in rounds:
        assert r["cells"] and all(v["allocated"] >= v["deficit"] > 0 for v in r["cells"].values())
    # the Asian cell (pass rate about 1/6) needed more attempts than the Hispanic one (1/2)
    by = {x["cell"]: x for x in q["cells"]}
    assert by["F/Asian/40-60"]["attempts"] > by["M/Hispanic/60-80"]["attempts"]
    # re-aged prompts filled the cell the table lacks (no 80+ White male row)
    assert by["M/White/80+"]["table_prompts"] == 0 and by["M/White/80+"]["prompts_used"]["re_aged"]
    for r in man.to_dict("records"):
        assert age_bin(r["age"]) == r["age_bin"] and parse_prefix(r["prompt"])[0] == r["age"]
    # run again: nothing to do
    s2 = _run(df, out, cfg, comp, HashQC())
    assert s2["this_run"]["attempts"] == 0 and s2["quota"]["stop_reason"] == "targets met"


def test_quota_loop_stops_at_the_budget_and_reports_misses(tmp_path, comp):
    from gen_helpers import constant_bundle
    from rv2.models.qc_networks import load_qc_models

    # QC always reads female and White (ages are not judged): only F/White cells pass
    qc = load_qc_models(constant_bundle(tmp_path / "qc"), "cpu")
    df = prompts_table(64, seed=2)
    qfile = tmp_path / "q.csv"
    qfile.write_text("sex,race,age_bin,target\nF,White,40-60,2\nM,Asian,60-80,2\n"
                     "F,Black,40-60,1\n")
    out = tmp_path / "s"
    s = _run(df, out, _cfg(targets=str(qfile), budget_attempts=23, max_age_shift=30), comp, qc)
    q = s["quota"]
    _check_accounting(s, out)
    assert q["stop_reason"] == "budget spent" and q["attempts_used"] == 23
    by = {x["cell"]: x for x in q["cells"]}
    assert by["M/Asian/60-80"]["accepted"] == 0 and by["F/Black/40-60"]["accepted"] == 0
    assert {m["cell"] for m in q["missed"]} >= {"M/Asian/60-80", "F/Black/40-60"}
    m = {x["cell"]: x for x in q["missed"]}["M/Asian/60-80"]
    assert m["missing"] == 2 and m["pass_rate"] == 0.0 and m["pass_rate_ci95"][0] == 0.0
    # the failing cells got the attempts (pass rate 0 -> need deficit / 0.05)
    assert by["M/Asian/60-80"]["attempts"] > by["F/White/40-60"]["attempts"]
    from rv2.generate.quota import format_report

    text = format_report(q)
    assert "budget spent" in text and "M/Asian/60-80" in text and "0.00 (0.00-" in text
    # a larger budget continues the same store
    s2 = _run(df, out, _cfg(targets=str(qfile), budget_attempts=30, max_age_shift=30), comp, qc)
    assert s2["quota"]["attempts_used"] == 30 and s2["this_run"]["attempts"] == 7


class _Interrupting:
    """An in-process executor that is interrupted (as by Ctrl-C twice) after `n` batches."""

    def __init__(self, n, batch_size=8):
        from rv2.generate.executor import InProcessExecutor

        self.inner, self.left, self.name = InProcessExecutor(batch_size), n, "inprocess"

    def run(self, runner, work, max_attempts, on_result=None):
        real = runner.process

        def process(batch):
            if self.left == 0:
                raise KeyboardInterrupt
            self.left -= 1
            return real(batch)

        runner.process = process
        try:
            self.inner.run(runner, work, max_attempts, on_result)
        finally:
            runner.process = real


def test_interrupted_quota_run_resumes_to_the_same_store(tmp_path, comp):
    from rv2.errors import InterruptedRun
    from rv2.generate.store import read_journal

    df = prompts_table(24, seed=4)
    cfg = _cfg(targets="per-cell=1", budget_attempts=120, batch_size=4)
    whole = _run(df, tmp_path / "whole", cfg, comp, HashQC())
    ref = pd.read_parquet(tmp_path / "whole" / "qc_log.parquet")
    out = tmp_path / "cut"
    for n in (3, 5):   # interrupted twice, mid-round
        with pytest.raises(InterruptedRun):
            _run(df, out, cfg, comp, HashQC(), executor=_Interrupting(n, 4))
        last = json.loads((out / ROUNDS).read_text().splitlines()[-1])
        done = {(r["prompt_id"], r["attempt"]) for r in read_journal(out / "journal.jsonl")}
        todo = [tuple(i) for i in last["items"] if tuple(i) not in done]
        assert 0 < len(todo) < len(last["items"])   # a round cut midway
    # a torn last line of the rounds journal (a crash while planning) is dropped
    with open(out / ROUNDS, "ab") as f:
        f.write(b'{"round": 99, "ite')
    s = _run(df, out, cfg, comp, HashQC())
    log = pd.read_parquet(out / "qc_log.parquet")
    key = ["prompt_id", "attempt"]
    assert sorted(map(tuple, log[key].values)) == sorted(map(tuple, ref[key].values))
    assert s["accepted"] == whole["accepted"] and s["quota"]["cells"] == whole["quota"]["cells"]
    _check_accounting(s, out)
    files = {p.relative_to(out).as_posix() for p in (out / "images").rglob("*") if p.is_file()}
    assert files == set(pd.read_parquet(out / "manifest.parquet")["path"])


def test_cli_quota_errors_are_one_line(tmp_path):
    from click.testing import CliRunner
    from rv2.cli import main

    prompts_table(8).to_parquet(tmp_path / "p.parquet")
    (tmp_path / "q.csv").write_text("sex,race,age_bin,target\nF,Asian,60-80,x\n")
    base = ["generate", "--prompts", str(tmp_path / "p.parquet"), "--model",
            str(tmp_path / "nomodel"), "--out", str(tmp_path / "o")]
    r = CliRunner().invoke(main, base + ["--quota", str(tmp_path / "q.csv")])
    assert r.exit_code == 2 and "line 2: column target: 'x'" in r.output
    r = CliRunner().invoke(main, base + ["--budget-attempts", "10"])
    assert r.exit_code == 2 and "give --quota" in r.output


def test_quota_with_early_rejection_accounting_adds_up(tmp_path, comp):
    from rv2.generate.config import EarlyRejectConfig

    df = prompts_table(48, seed=5)
    (tmp_path / "q.csv").write_text(QUOTA)
    cfg = _cfg(targets=str(tmp_path / "q.csv"), budget_attempts=40, max_age_shift=30)
    cfg.sampler.steps = 4
    cfg.early_reject = EarlyRejectConfig(at=[0.5], margin=0.0, age_margin=0.0)
    out = tmp_path / "s"
    s = _run(df, out, cfg, comp, HashQC())
    q = s["quota"]
    _check_accounting(s, out)
    acc = q["accounting"]
    assert acc["early_stopped"] > 0 and acc["failed"] >= 0
    assert acc == {k: s["attempts"][k] for k in ("attempts", "accepted", "failed", "early_stopped")}
    # the cells of this quota are disjoint and hold every attempt: their counts add up too
    assert sum(x["early_stopped_attempts"] for x in q["cells"]) == acc["early_stopped"]
    assert sum(x["attempts"] for x in q["cells"]) == acc["attempts"]
