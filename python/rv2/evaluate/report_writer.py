"""The evaluation report: report.json, report.md, report.html and PNG figures.

Figures follow the paper's: AUROC with CIs per model and test set, subgroup
AUROC per model (Fig. 7), fairness gap against AUROC (Fig. 8), underdiagnosis
gap against AUROC (Fig. 9), label-efficiency curves from a sweep table (Fig. 5).
NaN values are written as null in JSON and as "n/a" in tables.
"""
from __future__ import annotations

import html
import json
import math
from pathlib import Path

import numpy as np

from rv2.config import write_artifact_meta
from rv2.errors import MissingInputError, UserError
from rv2.files import atomic_write_text, plain

FAMILIES = {"sex_race": "sex x race/ethnicity", "sex_age": "sex x age"}


def _f(x, d=3):
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{d}f}"


def _ci(c, d=3):
    if not c or c.get("estimate") is None or not math.isfinite(c["estimate"]):
        return "n/a" + (f" ({c['reason']})" if c and c.get("reason") else "")
    lo, hi = c.get("low"), c.get("high")
    if lo is None or not math.isfinite(lo):
        why = f"; no CI: {c['reason']}" if c.get("reason") else ""
        return f"{c['estimate']:.{d}f}{why}"
    return f"{c['estimate']:.{d}f} [{lo:.{d}f}, {hi:.{d}f}]"


def _rule(result) -> str:
    return f"undefined labels: {result['macro_rule']['undefined_label']}"


def _p(p):
    if p is None or not math.isfinite(p):
        return "n/a"
    return f"{p:.2e}" if p < 1e-3 else f"{p:.4f}"


class _Doc:
    """Builds Markdown and HTML side by side."""

    def __init__(self, title):
        self.md = [f"# {title}", ""]
        self.html = [f"<h1>{html.escape(title)}</h1>"]

    def h(self, text, level=2):
        self.md += [f"{'#' * level} {text}", ""]
        self.html.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def p(self, text):
        self.md += [text, ""]
        self.html.append(f"<p>{html.escape(text)}</p>")

    def table(self, header, rows):
        self.md.append("| " + " | ".join(header) + " |")
        self.md.append("|" + "---|" * len(header))
        for r in rows:
            self.md.append("| " + " | ".join(str(c) for c in r) + " |")
        self.md.append("")
        h = "".join(f"<th>{html.escape(str(c))}</th>" for c in header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>"
                       for r in rows)
        self.html.append(f"<table><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>")

    def img(self, rel, alt):
        self.md += [f"![{alt}]({rel})", ""]
        self.html.append(f'<figure><img src="{html.escape(rel)}" alt="{html.escape(alt)}">'
                         f"<figcaption>{html.escape(alt)}</figcaption></figure>")

    def html_text(self):
        style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
                 "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
                 "padding:3px 8px;text-align:right}th{background:#eee}img{max-width:100%}")
        return ("<!doctype html><html><head><meta charset='utf-8'><title>rv2 report</title>"
                f"<style>{style}</style></head><body>" + "\n".join(self.html) + "</body></html>")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _err(c):
    e, lo, hi = c.get("estimate"), c.get("low"), c.get("high")
    if e is None or lo is None or hi is None:
        return np.nan, 0.0, 0.0
    return e, max(e - lo, 0.0), max(hi - e, 0.0)


def _ylim(ax):
    """0.4 to 1 (the paper's range) unless a bar or its CI goes below."""
    lows = [p.get_height() for p in ax.patches if np.isfinite(p.get_height())]
    lo = min([0.4] + [v - 0.05 for v in lows])
    ax.set_ylim(max(0.0, lo), 1.0)


def fig_auroc(result, path):
    """Macro AUROC with CIs per model (bars) and test set (groups)."""
    plt = _plt()
    sets = list(result["test_sets"])
    models = result["models"]
    fig, ax = plt.subplots(figsize=(max(5, 1.4 * len(sets) * len(models)), 3.6))
    width = 0.8 / len(models)
    for i, m in enumerate(models):
        vals = [_err(result["test_sets"][s]["models"][m]["macro"]["auroc"]) for s in sets]
        x = np.arange(len(sets)) + (i - (len(models) - 1) / 2) * width
        ax.bar(x, [v[0] for v in vals], width, yerr=np.array([[v[1] for v in vals],
                                                              [v[2] for v in vals]]),
               capsize=3, label=m)
    ax.set_xticks(np.arange(len(sets)), sets)
    ax.set_ylabel("macro AUROC (95% CI)")
    _ylim(ax)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def fig_subgroups(result, test_set, family, path):
    """Subgroup macro AUROC per model (Fig. 7 style)."""
    plt = _plt()
    models = result["models"]
    rows = result["test_sets"][test_set]["models"][models[0]]["fairness"][family]["subgroups"]
    groups = [r["group"] for r in rows]
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(groups)), 3.6))
    width = 0.8 / len(models)
    for i, m in enumerate(models):
        sub = result["test_sets"][test_set]["models"][m]["fairness"][family]["subgroups"]
        vals = [_err(r["auroc"]) for r in sub]
        x = np.arange(len(groups)) + (i - (len(models) - 1) / 2) * width
        ax.bar(x, [v[0] for v in vals], width, capsize=2, label=m,
               yerr=np.array([[v[1] for v in vals], [v[2] for v in vals]]))
    ax.set_xticks(np.arange(len(groups)), groups, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("subgroup macro AUROC")
    _ylim(ax)
    ax.set_title(f"{test_set}: {FAMILIES[family]}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def fig_gap_vs_auroc(result, key, path, ylabel):
    """A gap (fairness or underdiagnosis) against macro AUROC (Figs. 8 and 9)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8), sharey=True)
    markers = "osD^vP*X"
    any_point = False
    for ax, family in zip(axes, FAMILIES):
        for i, m in enumerate(result["models"]):
            for j, s in enumerate(result["test_sets"]):
                mr = result["test_sets"][s]["models"][m]
                g = mr["fairness"][family][key]
                if not g:
                    continue
                x, xl, xh = _err(mr["macro"]["auroc"])
                y, yl, yh = _err(g)
                if not (np.isfinite(x) and np.isfinite(y)):
                    continue
                any_point = True
                ax.errorbar(x, y, xerr=[[xl], [xh]], yerr=[[yl], [yh]],
                            fmt=markers[j % len(markers)], color=f"C{i}", capsize=2,
                            label=f"{m} / {s}")
        ax.set_title(FAMILIES[family])
        ax.set_xlabel("macro AUROC")
    axes[0].set_ylabel(ylabel)
    if any_point:
        axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


SWEEP_X = ("n_real_images", "real_fraction", "fraction", "n_real")
SWEEP_Y = ("auroc", "macro_auroc", "test_auroc_mean", "val_auroc_mean")


def read_sweep(path):
    """A sweep table (CSV or Parquet) with a size column and an AUROC column.

    Size: `synthetic_multiple` for a supplementation sweep (synthetic multiples over
    one real-data size), else the first of n_real_images, real_fraction, fraction,
    n_real; AUROC: the first of auroc, macro_auroc, test_auroc_mean, val_auroc_mean;
    curves by `strategy` (or `model`), mean and SD over repeated rows (seeds).
    """
    import pandas as pd

    p = Path(path)
    if not p.is_file():
        raise MissingInputError(f"sweep table not found: {p}")
    df = pd.read_parquet(p) if p.suffix == ".parquet" else pd.read_csv(p)
    x = next((c for c in SWEEP_X if c in df.columns and df[c].notna().any()), None)
    if "synthetic_multiple" in df.columns and df["synthetic_multiple"].notna().any() and (
            x is None or df.loc[df["synthetic_multiple"].notna(), x].nunique() <= 1):
        x = "synthetic_multiple"  # real data fixed: the curve runs over the synthetic size
    y = next((c for c in SWEEP_Y if c in df.columns), None)
    if x is None or y is None:
        raise UserError(f"sweep table {p}: needs a size column (one of {SWEEP_X}) and an "
                         f"AUROC column (one of {SWEEP_Y}); has {list(df.columns)}")
    key = "strategy" if "strategy" in df.columns else ("model" if "model" in df.columns else None)
    df = df.assign(_curve=df[key].astype(str) if key else "all")
    agg = (df.dropna(subset=[x, y]).groupby(["_curve", x])[y].agg(["mean", "std", "count"])
           .reset_index())
    return agg, x, y


def fig_sweep(sweep_path, path):
    plt = _plt()
    agg, x, y = read_sweep(sweep_path)
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, d in agg.groupby("_curve"):
        ax.errorbar(d[x], d["mean"], yerr=d["std"].fillna(0), marker="o", capsize=3, label=name)
    if x.startswith("n_"):
        ax.set_xscale("log")
    ax.set_xlabel(x)
    ax.set_ylabel(f"{y} (mean, SD over seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return agg, x, y


def _model_section(doc, result, s, m):
    mr = result["test_sets"][s]["models"][m]
    doc.h(f"{m} on {s}", 3)
    rows = [[lab, v["n"], v["positives"], _ci(v["auroc"]), _ci(v["ap"]),
             _f(v["auroc"]["valid_share"], 2)] for lab, v in mr["per_label"].items()]
    mac = mr["macro"]
    rows.append([f"macro ({mac['labels_in_macro']} labels; {_rule(result)})", "", "",
                 _ci(mac["auroc"]), _ci(mac["ap"]), _f(mac["auroc"]["valid_share"], 2)])
    doc.table(["label", "n", "positives", "AUROC [95% CI]", "AP [95% CI]", "valid resamples"],
              rows)
    if mac["labels_undefined"]:
        how = ("left out of the macro" if mac.get("undefined_label", "skip") == "skip"
               else "scored 0 in the macro")
        doc.p(f"Undefined (one class only, {how}): {', '.join(mac['labels_undefined'])}.")
    if mr.get("underdiagnosis_rate"):
        doc.p(f"Underdiagnosis rate (all cases): {_ci(mr['underdiagnosis_rate'])}.")
    for family, fr in mr["fairness"].items():
        rows = []
        for r in fr["subgroups"]:
            ud = _ci(r.get("underdiagnosis")) if "underdiagnosis" in r else "-"
            inc = ("yes" if r["in_fairness_gap"] else "no") + (
                "/" + ("yes" if r.get("in_underdiagnosis_gap") else "no")
                if "in_underdiagnosis_gap" in r else "")
            rows.append([r["group"], r["n"], r.get("n_nf_positive", "-"),
                         r.get("n_nf_negative", "-"), f"{r['labels_defined']}",
                         _ci(r["auroc"]), ud, inc])
        doc.table(["subgroup", "n", "NF+", "NF-", "labels",
                   f"macro AUROC [CI] ({_rule(result)})", "underdiagnosis [CI]",
                   "in gaps (AUROC/UD)"], rows)
        ug = _ci(fr["underdiagnosis_gap"]) if fr["underdiagnosis_gap"] else "n/a (no thresholds)"
        method = fr["fairness_gap"].get("method", "percentile")
        doc.p(f"{FAMILIES[family]}: fairness gap {_ci(fr['fairness_gap'])}, "
              f"underdiagnosis gap {ug} ({method} bootstrap intervals).")


def _comparison_section(doc, result, s):
    comps = result["test_sets"][s].get("comparisons", {})
    for name, c in comps.items():
        doc.h(f"{name} vs {result['baseline']} on {s}", 3)
        rows = []
        for lab, v in c["per_label"].items():
            dl = v["delong"]
            rows.append([lab, _ci(v["auroc_diff"]), _f(dl.get("z"), 2), _p(dl.get("p")),
                         _ci(v["ap_diff"]), _p(v["ap_permutation_p"])])
        mac = c["macro"]
        test = mac["auroc"].get("test", dict(mac["auroc"]["bootstrap_test"], method="bootstrap"))
        rows.append([f"macro ({mac['labels_in_macro']}; {_rule(result)})",
                     _ci(mac["auroc"]["diff"]), _f(test.get("z"), 2),
                     _p(test.get("p")) + f" ({test['method']})",
                     _ci(mac["ap"]["diff"]), _p(mac["ap"].get("permutation_p"))])
        doc.table(["label", "ΔAUROC [95% CI]", "z (DeLong)", "p", "ΔAP [95% CI]",
                   "p (permutation)"], rows)
        if mac.get("labels_undefined"):
            doc.p(f"Undefined for a model of this pair ({_rule(result)}): "
                  f"{', '.join(mac['labels_undefined'])}.")
        g = c["gaps"]
        doc.table(["family", "fairness gap model", "baseline", "underdiagnosis gap model",
                   "baseline"],
                  [[FAMILIES[f], _f(v["fairness_gap"]["model"]), _f(v["fairness_gap"]["baseline"]),
                    _f(v["underdiagnosis_gap"]["model"]), _f(v["underdiagnosis_gap"]["baseline"])]
                   for f, v in g.items()])


def write_report(result: dict, out, config=None, *, inputs=(), sweep=None) -> Path:
    """Write report.json, report.md, report.html and figures/ into `out`."""
    out = Path(out)
    figs = out / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    result = plain(result, nan_to_none=True)
    kind = result.get("kind", "evaluate")
    doc = _Doc("rv2 evaluation report" if kind == "evaluate" else "rv2 model comparison")
    cfg = result["config"]
    lp, bs, mr = result["label_policy"], result["bootstrap"], result["macro_rule"]
    doc.p(f"Models: {', '.join(result['models'])}. Labels: {', '.join(result['labels'])}. "
          f"Bootstrap B = {cfg['n_boot']} (seed {cfg['seed']}"
          + (f", draws of the {bs['draws']}" if bs.get("draws") else "")
          + f") over {bs['unit']}s ({bs['reason']}), {int(cfg['level'] * 100)}% percentile CIs ({cfg['gap_ci']} "
          f"intervals for gaps); subgroups with fewer than {cfg['min_count']} cases are shown "
          f"but left out of gaps.")
    doc.p(f"Label policy: {lp['description']} ({lp['source']}"
          + ("; differs from a model's own, allowed explicitly" if lp["mismatch_allowed"] else "")
          + f"). Macro rule ({_rule(result)}): {mr['description']}.")
    if kind == "compare":
        doc.p("Methods: " + "; ".join(f"{k}: {v}" for k, v in result["methods"].items()) + ".")
    doc.h("Macro AUROC per model and test set")
    fig_auroc(result, figs / "auroc.png")
    doc.img("figures/auroc.png", "Macro AUROC with 95% CI per model and test set")
    doc.table(["test set", "n", f"{bs['unit']}s"]
              + [f"{m} ({_rule(result)})" for m in result["models"]] + ["undefined labels (one class)"],
              [[s, v["n"], v.get("units", "")]
               + [_ci(v["models"][m]["macro"]["auroc"]) for m in result["models"]]
               + [", ".join(sorted({lab for m in result["models"]
                                    for lab in v["models"][m]["macro"]["labels_undefined"]}))
                  or "none"]
               for s, v in result["test_sets"].items()])
    doc.h("Fairness")
    fig_gap_vs_auroc(result, "fairness_gap", figs / "fairness_gap_vs_auroc.png",
                     "fairness gap (max - min subgroup AUROC)")
    doc.img("figures/fairness_gap_vs_auroc.png", "Fairness gap against AUROC (Fig. 8)")
    if any(t for t in result["thresholds"]):
        fig_gap_vs_auroc(result, "underdiagnosis_gap", figs / "underdiagnosis_gap_vs_auroc.png",
                         "underdiagnosis gap")
        doc.img("figures/underdiagnosis_gap_vs_auroc.png",
                "Underdiagnosis gap against AUROC (Fig. 9)")
    else:
        doc.p("No thresholds given: underdiagnosis not computed (pass --model DIR or "
              "--thresholds FILE).")
    for s in result["test_sets"]:
        for family in FAMILIES:
            fn = f"subgroups_{_slug(s)}_{family}.png"
            fig_subgroups(result, s, family, figs / fn)
            doc.img(f"figures/{fn}", f"Subgroup AUROC per model, {s}, {FAMILIES[family]} (Fig. 7)")
    if sweep is not None:
        doc.h("Label efficiency")
        agg, x, y = fig_sweep(sweep, figs / "label_efficiency.png")
        doc.img("figures/label_efficiency.png", "Label-efficiency curves (Fig. 5)")
        doc.table(["curve", x, f"{y} mean", "SD", "runs"],
                  [[r["_curve"], r[x], _f(r["mean"]), _f(r["std"]), int(r["count"])]
                   for _, r in agg.iterrows()])
    if kind == "compare":
        doc.h("Paired comparisons")
        for s in result["test_sets"]:
            _comparison_section(doc, result, s)
    doc.h("Details per model")
    for s in result["test_sets"]:
        for m in result["models"]:
            _model_section(doc, result, s, m)
    atomic_write_text(out / "report.json", json.dumps(result, indent=1, allow_nan=False))
    atomic_write_text(out / "report.md", "\n".join(doc.md) + "\n")
    atomic_write_text(out / "report.html", doc.html_text())
    write_artifact_meta(out, config, inputs=[i for i in [*inputs, sweep] if i is not None],
                        extra={"kind": kind, "models": result["models"]})
    return out


def _slug(s: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in str(s))
