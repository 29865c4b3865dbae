"""The ``mixpro eval`` text table.

Owns :func:`format_table`: Table-5 style rows (percent) from evaluation result dicts.
"""

from __future__ import annotations

from collections.abc import Sequence

from .occlusion import DROP_MODES


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.2f}"


def format_table(results: Sequence[dict]) -> str:
    """Table-5 style text table (percent): clean Top-1/Top-5, Calib-Error ↓, AURRA ↑,
    OOD AUPRC ↑ / AUROC ↑, and PatchDrop accuracy at 50% information loss per mode."""
    head = ["checkpoint", "Top-1", "Top-5", "Calib-Err↓", "AURRA", "OOD AUPRC", "OOD AUROC"]
    occl_modes = [m for m in DROP_MODES if any(m in r.get("occlusion", {}).get("curves", {})
                                               for r in results)]
    head += [f"{m}@50%" for m in occl_modes]
    rows = []
    for r in results:
        c, o = r.get("clean", {}), r.get("ood", {})
        row = [r["name"], _pct(c.get("top1")), _pct(c.get("top5")), _pct(c.get("calib_err")),
               _pct(c.get("aurra")), _pct(o.get("auprc")), _pct(o.get("auroc"))]
        for m in occl_modes:
            pts = r.get("occlusion", {}).get("curves", {}).get(m, [])
            at = [p for p in pts if abs(p["info_loss"] - 0.5) < 1e-9]
            row.append(f"{_pct(at[0]['acc_mean'])}±{100 * at[0]['acc_std']:.2f}"
                       if at else "—")
        rows.append(row)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]

    def line(cells: list[str]) -> str:
        padded = [c.ljust(w) if i == 0 else c.rjust(w)
                  for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
        return "| " + " | ".join(padded) + " |"

    sep = "|" + "|".join(("-" * (w + 2)) for w in widths) + "|"
    return "\n".join([line(head), sep, *(line(r) for r in rows)])


