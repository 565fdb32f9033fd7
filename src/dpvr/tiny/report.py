"""Text table of a build's per-family accuracy (with image, blind, chance)."""

from __future__ import annotations


def format_results(results: dict) -> str:
    lines = [f"{'family':<10}{'acc %':>8}{'blind %':>9}{'chance %':>10}{'n':>6}  details",
             "-" * 72]
    for fam, r in results.items():
        details = ""
        if fam == "pope":
            details = " ".join(f"{k}={v:.0f}" for k, v in r["categories"].items())
        if "yes_ratio" in r:
            details += f" yes-ratio={r['yes_ratio']:.0f}"
        lines.append(f"{fam:<10}{r['accuracy']:>8.1f}{r['blind']:>9.1f}{r['chance']:>10.1f}{r['n']:>6}  {details.strip()}")
    return "\n".join(lines)


def markdown_table(results: dict) -> str:
    rows = ["| family | accuracy | blind | chance | n | notes |", "|---|---:|---:|---:|---:|---|"]
    for fam, r in results.items():
        notes = ""
        if fam == "pope":
            notes = ", ".join(f"{k} {v:.1f}" for k, v in r["categories"].items())
        if "yes_ratio" in r:
            notes += f"{'; ' if notes else ''}yes-ratio {r['yes_ratio']:.1f}"
        rows.append(f"| {fam} | {r['accuracy']:.1f} | {r['blind']:.1f} | {r['chance']:.1f} | {r['n']} | {notes} |")
    return "\n".join(rows)
