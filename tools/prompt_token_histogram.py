#!/usr/bin/env python
"""Token-length histogram of impressions and built prompts (CLIP tokens, start/end included).

Without arguments: the real OpenI/IU reports shipped in the torchxrayvision wheel -- raw
impressions, cleaned impressions, and the prompts `rv2 prompts build` makes of them (with
and without demographics: OpenI has none, so a fixed "90 year old HISPANIC female" prefix,
the longest of the 8 expansion variants, stands in).
With --prompts P.parquet: the n_tokens column of a prompts table.

    .venv/bin/python tools/prompt_token_histogram.py
    .venv/bin/python tools/prompt_token_histogram.py --prompts out/prompts.parquet
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

EDGES = [0, 10, 20, 30, 40, 50, 60, 70, 77]


def histogram(name: str, n: np.ndarray, width: int = 40) -> str:
    lines = [f"\n{name}: {len(n)} texts; median {np.median(n):.0f}, p95 {np.percentile(n, 95):.0f}, "
             f"max {n.max()}, over 77: {(n > 77).sum()}"]
    bins = [(lo + 1, hi) for lo, hi in zip(EDGES[:-1], EDGES[1:])] + [(78, max(78, int(n.max())))]
    counts = [int(((n >= lo) & (n <= hi)).sum()) for lo, hi in bins]
    top = max(counts) or 1
    lines.append(f"{'tokens':>9} {'count':>6} {'share':>6}")
    for (lo, hi), c in zip(bins, counts):
        label = f"{lo}-{hi}" if lo < 78 else ">77"
        lines.append(f"{label:>9} {c:>6} {100 * c / len(n):>5.1f}% {'#' * round(width * c / top)}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", help="a prompts table (Parquet) to summarize instead of OpenI")
    args = ap.parse_args(argv)
    from rv2.prompts.tokenizer import count_tokens_batch

    if args.prompts:
        import pandas as pd

        df = pd.read_parquet(args.prompts)
        print(histogram(f"prompts in {args.prompts}", df["n_tokens"].to_numpy()))
        if "shortened_by" in df:
            print("\nshortened_by:", df["shortened_by"].value_counts().to_dict())
        return 0

    import pandas as pd
    from rv2.data.manifest import conform
    from rv2.data.report_sections import iter_openi_reports, openi_reports_archive
    from rv2.prompts.build import build_prompts
    from rv2.prompts.config import PromptsConfig
    from rv2.prompts.template import PromptTemplate, clean_impression

    t0 = time.perf_counter()
    reports = [r for r in iter_openi_reports(openi_reports_archive()) if r["impression"]]
    raw = [r["sections"]["impression"] for r in reports]
    print(f"OpenI/IU: {len(reports)} reports with an impression, {len(set(raw))} distinct")
    print(histogram("raw impressions (as in the XML)", np.array(count_tokens_batch(raw))))
    t = PromptTemplate()
    cleaned = [t.format_impression(clean_impression(x)) for x in raw]
    print(histogram("cleaned impressions (XXXX removed, final ' .')",
                    np.array(count_tokens_batch(cleaned))))
    for label, demo in (("prompts, impression only (no demographics)", {}),
                        ("prompts with the longest prefix (90 year old HISPANIC female.)",
                         {"sex": "F", "age": 90.0, "race": "Hispanic"})):
        m = conform(pd.DataFrame([{"image_id": f"CXR{r['report_id']}", "impression": x, **demo}
                                  for r, x in zip(reports, raw)]), dataset="openi")
        df, stats = build_prompts(m, PromptsConfig(allow_missing_demographics=not demo))
        print(histogram(label, df["n_tokens"].to_numpy()))
        print(f"shortened_by: {stats['shortened_by']}")
    print(f"\n({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
