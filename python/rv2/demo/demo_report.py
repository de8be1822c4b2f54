"""The demo's own report: one page that strings every stage's artifact together.

Numbers come from the stages' files (manifest sidecars, the generation store's
summary.json, the classifiers' metadata, `rv2 compare`'s report.json); this
module only arranges them. Markdown (`report.md`) and a plain HTML twin.
"""
from __future__ import annotations

import html
import json
import math
from pathlib import Path

from rv2.files import atomic_write_text, dumps


def _read(p: Path) -> dict:
    return json.loads(p.read_text()) if p.is_file() else {}


def _fmt(v, nd=3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:.{nd}f}" if isinstance(v, float) else str(v)


def _ci(d: dict | None, nd=3) -> str:
    if not d:
        return "n/a"
    est, lo, hi = d.get("estimate"), d.get("low"), d.get("high")
    if est is None or not math.isfinite(est):
        return "n/a"
    return f"{est:.{nd}f} [{_fmt(lo, nd)}, {_fmt(hi, nd)}]"


def _table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return out + [""]


def collect(out: Path) -> dict:
    """Everything the report shows, as a dict (also written as report.json)."""
    data = out / "data"
    res: dict = {}
    for name in ("mimic", "chexpert", "nih", "test"):
        side = _read(data / f"{name}.sidecar.json")
        res[f"manifest_{name}"] = {"counts": side.get("counts", {}),
                                   "exclusions": side.get("exclusions", [])}
    pmeta = _read(out / "prompts" / "prompts.parquet.rv2.json")
    emeta = _read(out / "prompts" / "expanded.parquet.rv2.json")
    res["prompts"] = {"built": pmeta.get("rows"), "expanded": emeta.get("rows"),
                      "build_stats": pmeta.get("stats", {})}
    res["generation"] = _read(out / "synthetic" / "summary.json")
    models = {}
    for d in sorted((out / "models").glob("*")):
        meta = _read(d / "rv2_meta.json")
        models[d.name] = meta.get("summary", {})
    res["classifiers"] = models
    res["compare"] = _read(out / "reports" / "compare" / "report.json")
    return res


def qc_counts_consistent(gen: dict) -> bool:
    """accepted + failed == prompts seen, and the attempts histogram adds up to it."""
    if not gen:
        return False
    hist = gen.get("attempts_histogram", {})
    return (gen.get("accepted", -1) + gen.get("failed", -1) == gen.get("prompts_seen", -2)
            and sum(hist.values()) == gen.get("prompts_seen"))


def write_demo_report(out: Path, cfg, stage_log: list[dict], weights: dict, total_s: float) -> Path:
    out = Path(out)
    res = collect(out)
    record = _read(Path(weights["record"]))
    L: list[str] = ["# rv2 demo report", "",
                    f"Phantom world seed {cfg.seed}, size `{cfg.size}`; wall time {total_s:.0f} s. "
                    "Every image is a procedural phantom; the demographic marks in the corners are "
                    "synthetic markers, not anatomy (see `rv2.demo.world`). The commands run are in "
                    "`commands.sh`.", ""]
    # data
    L += ["## Data (`rv2 data index`)", ""]
    for name, title in (("mimic", "MIMIC layout (in-distribution)"),
                        ("chexpert", "CheXpert layout (external site)"),
                        ("nih", "NIH ChestX-ray14 layout (external site, no race recorded)")):
        m = res[f"manifest_{name}"]
        c = m["counts"]
        if not c:
            continue
        L += [f"**{title}**: {c.get('rows', 'n/a')} PA images, {c.get('patients', 'n/a')} patients; "
              f"splits {c.get('by_split', {})}; race {c.get('by_race', {})}", ""]
        if m["exclusions"]:
            L += _table(["step", "removed", "remaining"],
                        [[e.get("step"), e.get("removed", ""), e.get("remaining")]
                         for e in m["exclusions"]])
    t = res["manifest_test"]["counts"]
    L += [f"Test set: {t.get('rows', 'n/a')} images (`data/test.parquet`: MIMIC p19 + the "
          "external sites).", ""]
    # prompts + generation
    p = res["prompts"]
    L += ["## Prompts and QC'd generation (`rv2 prompts`, `rv2 generate`)", "",
          f"{p['built']} prompts built, {p['expanded']} after the balanced 2 x 4 expansion; "
          f"the first {cfg.n_generate} generated with {cfg.gen_steps} PNDM steps, at most "
          f"{cfg.max_attempts} attempts each.", ""]
    g = res["generation"]
    if g:
        ok = qc_counts_consistent(g)
        L += _table(["prompts", "accepted", "failed", "failed by attribute", "attempts histogram",
                     "attempt pass rate (sex / race / age)", "counts add up"],
                    [[g.get("prompts_seen"), g.get("accepted"), g.get("failed"),
                      g.get("failed_by_attribute"), g.get("attempts_histogram"),
                      " / ".join(_fmt(g.get("attempt_pass_rate", {}).get(k), 2)
                                 for k in ("sex", "race", "age")), "yes" if ok else "NO"]])
    gen_eval = record.get("stages", {}).get("eval", {}).get("metrics", {})
    if gen_eval:
        L += [f"Bundled generator, measured at training time on {gen_eval.get('n_prompts')} held-out "
              f"prompts: QC pass rate {gen_eval.get('qc_pass_rate')} vs chance "
              f"{gen_eval.get('chance_pass_rate_shuffled_requests')} (`rv2/demo/weights/record.json`).",
              ""]
    # classifiers
    L += ["## Classifiers (`rv2 train-classifier`)", ""]
    rows = []
    for name, s in res["classifiers"].items():
        rows.append([name, s.get("best_epoch", "n/a"), s.get("epochs_run", "n/a"),
                     _fmt(s.get("val_auroc_mean")), s.get("stop_reason", "")])
    L += _table(["strategy", "best epoch", "epochs", "val mean AUROC (14)", "stopped"], rows)
    # evaluation
    comp = res["compare"]
    L += ["## Evaluation (`rv2 evaluate`, `rv2 compare`)", ""]
    for set_name, ts in comp.get("test_sets", {}).items():
        L += [f"### Test set `{set_name}` (n = {ts.get('n')})", ""]
        rows = []
        for mname, mres in ts.get("models", {}).items():
            fr = mres.get("fairness", {})
            rows.append([mname, _ci(mres["macro"]["auroc"]), _ci(mres["macro"]["ap"]),
                         _ci((fr.get("sex_race") or {}).get("fairness_gap")),
                         _ci((fr.get("sex_age") or {}).get("fairness_gap")),
                         _ci(mres.get("underdiagnosis_rate"))])
        L += _table(["model", "macro AUROC [95% CI]", "macro AP", "fairness gap sex x race",
                     "fairness gap sex x age", "underdiagnosis rate"], rows)
        labels = comp.get("labels", [])
        rows = []
        for mname, mres in ts.get("models", {}).items():
            rows.append([mname] + [_fmt((mres["per_label"].get(lab) or {}).get("auroc", {})
                                        .get("estimate"), 3) for lab in labels])
        L += _table(["AUROC"] + labels, rows)
        comps = ts.get("comparisons", {})
        if comps:
            rows = []
            for mname, c in comps.items():
                d = c["macro"]["auroc"]
                rows.append([f"{mname} - {comp.get('baseline')}", _ci(d["diff"]),
                             _fmt(d["bootstrap_test"].get("p")),
                             _fmt(c["macro"]["ap"].get("permutation_p"))])
            L += _table(["comparison", "macro dAUROC [95% CI]", "p (paired bootstrap)",
                         "p (AP permutation)"], rows)
    L += ["## Artifacts", "",
          "Each has its config and inputs' hashes beside it (`*.rv2.json` / `rv2_meta.json`).", ""]
    L += _table(["stage", "command", "wall s"],
                [[s["stage"], f"`{s['command']}`", s["wall_s"]] for s in stage_log])
    L += ["Reports per model: " + ", ".join(f"`reports/{n}/report.html`" for n in res["classifiers"])
          + "; paired comparison: `reports/compare/report.html`.", ""]
    md = "\n".join(L)
    report = out / "report.md"
    atomic_write_text(report, md)
    atomic_write_text(out / "report.json", dumps(res, indent=2))
    atomic_write_text(out / "report.html", _to_html(md))
    return report


def _to_html(md: str) -> str:
    """Minimal Markdown (headings, tables, paragraphs) to HTML."""
    out = ["<!doctype html><meta charset='utf-8'><title>rv2 demo report</title>",
           "<style>body{font-family:sans-serif;max-width:70em;margin:2em auto}"
           "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;"
           "padding:.2em .5em}</style>"]
    lines = md.splitlines()
    i = 0
    while i < len(lines):
        ln = lines[i]
        if ln.startswith("#"):
            level = len(ln) - len(ln.lstrip("#"))
            out.append(f"<h{level}>{html.escape(ln[level:].strip())}</h{level}>")
        elif ln.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(lines[i])
                i += 1
            cells = [[c.strip() for c in r.strip("|").split("|")] for r in rows]
            out.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in cells[0])
                       + "</tr>")
            for r in cells[2:]:
                out.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>")
            out.append("</table>")
            continue
        elif ln.strip():
            out.append(f"<p>{html.escape(ln)}</p>")
        i += 1
    return "\n".join(out) + "\n"
