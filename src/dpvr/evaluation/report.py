"""Markdown tables from a ``results.json`` dict: the comparison table and per-family detail."""

from __future__ import annotations


def _methods(results: dict) -> list[tuple[str, dict]]:
    """(label, entry) in the order the methods ran (results.json stores them sorted by label)."""
    order = results.get("method_order") or list(results["methods"])
    return [(label, results["methods"][label]) for label in order]


def _fmt(x) -> str:
    return "—" if x is None else f"{x:.1f}"


def _columns(results: dict) -> list[tuple[str, str, str]]:
    """(header, family, metric) for the main table: accuracy per family, plus F1 and yes-ratio for POPE-style families."""
    cols = []
    for fam in results["settings"]["families"]:
        kinds = {m["families"][fam]["kind"] for m in results["methods"].values() if fam in m["families"]}
        cols.append((fam if "yesno" not in kinds else f"{fam} acc", fam, "accuracy"))
        if kinds == {"yesno"} and fam == "pope":
            cols += [(f"{fam} F1", fam, "f1"), (f"{fam} yes%", fam, "yes_ratio")]
    return cols


def markdown_table(results: dict) -> str:
    """One row per method (and per blind run), one column per family's headline figure, then the mean."""
    cols = _columns(results)
    head = ["method"] + [c[0] for c in cols] + ["mean"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for label, m in _methods(results):
        cells = [_fmt(m["families"].get(fam, {}).get(metric)) for _, fam, metric in cols]
        lines.append("| " + " | ".join([label] + cells + [_fmt(m["overall"]["accuracy"])]) + " |")
    chance = results.get("chance") or {}
    if chance and all(fam in chance for fam in results["settings"]["families"]):
        cells = [_fmt(chance[fam]) if metric == "accuracy" else "" for _, fam, metric in cols]
        mean = sum(chance[f] for f in results["settings"]["families"]) / len(results["settings"]["families"])
        lines.append("| " + " | ".join(["*chance*"] + cells + [_fmt(mean)]) + " |")
    return "\n".join(lines) + "\n"


def detail_tables(results: dict) -> str:
    """Per family: every metric overall and per category, one row per method."""
    parts = []
    for fam in results["settings"]["families"]:
        entries = {label: m["families"][fam] for label, m in _methods(results) if fam in m["families"]}
        if not entries:
            continue
        first = next(iter(entries.values()))
        metrics = [k for k in first if k not in ("kind", "categories", "n") and isinstance(first[k], (int, float))]
        cats = sorted({c for e in entries.values() for c in e.get("categories", {})})
        parts.append(f"### {fam} ({first['kind']}, n={first['n']})\n")
        head = ["method", "scope"] + metrics
        parts.append("| " + " | ".join(head) + " |")
        parts.append("|" + "|".join(["---", "---"] + ["---:"] * len(metrics)) + "|")
        for label, e in entries.items():
            for scope, fig in [("all", e)] + [(c, e["categories"][c]) for c in cats if c in e.get("categories", {})]:
                cells = [f"{fig[k]:.2f}" if isinstance(fig.get(k), float) else str(fig.get(k, "")) for k in metrics]
                parts.append("| " + " | ".join([label, f"{scope} (n={fig['n']})"] + cells) + " |")
        parts.append("")
    return "\n".join(parts)


def markdown_report(results: dict) -> str:
    s = results["settings"]
    flags = [f"families: {', '.join(s['families'])}", f"limit: {s['limit']}", f"batch size: {s['batch_size']}",
             f"max new tokens: {s['max_new_tokens']}", f"circular: {s['circular']}", f"blind: {s['blind']}"]
    return (f"# dpvr eval\n\nmodel: `{results['model']['path']}`  \nbenchmark: `{s['benchmark']}`  \n"
            + "  \n".join(flags) + "\n\nFigures are percentages; mean = mean of the family accuracies.\n\n"
            + markdown_table(results) + "\n## Per family\n\n" + detail_tables(results))
