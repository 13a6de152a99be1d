"""Readable evaluation output: overlay PNGs of selected slices and a self-contained report.html.

Overlays show the image in grey with the ground-truth contour (solid) and the predicted contour (dashed)
of each class in its own colour, with a legend. The HTML page has no external resources: styles are inline
and overlays are embedded as base64, so the file can be mailed or archived as is.
"""
from __future__ import annotations

import base64
import html
import math
from pathlib import Path

import numpy as np

from smaformer.io_utils import atomic_path, write_text

COLOURS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45",
           "#fabed4", "#469990", "#dcbeff", "#9a6324", "#fffac8", "#800000", "#aaffc3", "#808000"]


def select_slices(pred: np.ndarray, ref: np.ndarray, k: int) -> list[int]:
    """Up to ``k`` slice indices (axis 0) worth looking at: most wrong voxels first, then most foreground."""
    if k < 1:
        return []
    axes = tuple(range(1, pred.ndim))
    wrong = np.count_nonzero(pred != ref, axis=axes)
    fg = np.count_nonzero((ref > 0) | (pred > 0), axis=axes)
    order = np.lexsort((-fg, -wrong))
    return [int(z) for z in order if fg[z] > 0][:k]


def overlay_png(image: np.ndarray, ref: np.ndarray, pred: np.ndarray, classes: dict[int, str], path: str | Path,
                title: str = "") -> Path:
    """Write one slice as a PNG: grey image, GT contours solid, prediction contours dashed, a legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 3:  # (C,H,W): colour when 3 channels, else the first channel
        img = img.transpose(1, 2, 0) if img.shape[0] == 3 else img[0]
    lo, hi = np.percentile(img, (0.5, 99.5)) if img.size else (0.0, 1.0)
    hi = hi if hi > lo else lo + 1
    h, w = img.shape[:2]
    fig, ax = plt.subplots(figsize=(6.0, 6.0 * h / max(w, 1) + 0.6), dpi=100)
    if img.ndim == 3:
        ax.imshow(np.clip((img - lo) / (hi - lo), 0, 1), interpolation="nearest")
    else:
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
    handles = []
    for k, name in classes.items():
        colour = COLOURS[(k - 1) % len(COLOURS)]
        drawn = False
        for mask, style in ((ref == k, "solid"), (pred == k, "dashed")):
            if mask.any() and not mask.all():
                ax.contour(mask.astype(np.float32), levels=[0.5], colors=[colour], linestyles=style, linewidths=1.4)
                drawn = True
        if drawn:
            handles.append(Line2D([], [], color=colour, lw=3, label=f"{k} {name}"))
    handles += [Line2D([], [], color="white", lw=1.4, ls="solid", label="ground truth"),
                Line2D([], [], color="white", lw=1.4, ls="dashed", label="prediction")]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.01), ncol=min(len(handles), 4),
              fontsize=8, frameon=False, labelcolor="white", facecolor="black")
    ax.set_title(title, fontsize=9, color="white")
    ax.axis("off")
    fig.patch.set_facecolor("black")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, facecolor="black", format="png")
    plt.close(fig)
    return path


def _fmt(v, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return html.escape(str(v))


def _img_tag(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(Path(path).name)}" src="data:image/png;base64,{data}">'


STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0;font-size:13px}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f3f3f3}
td.l,th.l{text-align:left}.bad{background:#fde2e2}.note{color:#555;font-size:13px;max-width:900px}
.ov img{width:380px;margin:4px;border:1px solid #999}code{background:#f5f5f5;padding:1px 3px}
"""

CLASS_COLUMNS = [("standard", "dice", "Dice"), ("standard", "iou", "IoU"), ("standard", "hd95", "HD95"),
                 ("standard", "assd", "ASSD"), ("legacy", "dice", "legacy Dice"), ("legacy", "hd95", "legacy HD95"),
                 ("slice", "dice", "slice Dice")]


def write_html(result: dict, overlays: dict[str, list[Path]], path: str | Path) -> Path:
    """Write report.html from an evaluation result (the metrics.json dict) and the overlay PNGs per case."""
    classes = {int(k): v for k, v in result["classes"].items()}
    unit = result["conventions"]["hd95_unit"]
    ck = result["checkpoint"]
    out = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>smaformer evaluation</title>",
           f"<style>{STYLE}</style></head><body>",
           f"<h1>Evaluation of {_fmt(ck['model'].get('name'))}</h1>",
           "<p class='note'>",
           f"checkpoint <code>{_fmt(ck['path'])}</code> (SHA-256 <code>{_fmt(ck['sha256'][:16])}…</code>)<br>",
           f"data <code>{_fmt(result['data']['path'])}</code>, split <code>{_fmt(result['data']['split'])}</code>,"
           f" {result['data']['n_cases']} cases evaluated, {result['data']['n_failed']} failed<br>",
           f"resize: {'legacy (argmax zoomed with order 0)' if result['config']['legacy_resize'] else 'logits'}"
           f", post-processing: {_fmt(result['config']['postprocess'] or 'none')}, created {_fmt(result['created'])}"
           "</p>"]
    fg = result["foreground_mean"]
    out.append("<h2>Foreground mean</h2><table><tr>" + "".join(f"<th>{t}</th>" for *_, t in CLASS_COLUMNS) + "</tr>")
    out.append("<tr>" + "".join(f"<td>{_fmt(fg[c].get(m))}</td>" for c, m, _ in CLASS_COLUMNS) + "</tr></table>")
    out.append("<h2>Per class</h2><table><tr><th class='l'>class</th>"
               + "".join(f"<th>{t}</th>" for *_, t in CLASS_COLUMNS)
               + "<th>cases</th><th>pred only</th><th>GT only</th><th>both empty</th></tr>")
    for k, name in classes.items():
        m = result["mean"][str(k)]
        out.append(f"<tr><td class='l'>{k} {_fmt(name)}</td>"
                   + "".join(f"<td>{_fmt(m[c].get(mm))}</td>" for c, mm, _ in CLASS_COLUMNS)
                   + "".join(f"<td>{m['counts'][x]}</td>" for x in ("n_cases", "pred_only", "ref_only", "both_empty"))
                   + "</tr>")
    out.append("</table>")
    conv = result["conventions"]
    out.append(f"<p class='note'>HD95 and ASSD in {html.escape(unit)} units. "
               f"<b>standard</b>: {html.escape(conv['standard'])}"
               f"<br><b>legacy</b>: {html.escape(conv['legacy'])}<br><b>slice Dice</b>: {html.escape(conv['slice'])}"
               "</p>")
    if result["failed_cases"]:
        out.append("<h2>Failed cases</h2><table><tr><th class='l'>case</th><th class='l'>error</th></tr>")
        out += [f"<tr><td class='l'>{_fmt(f['case'])}</td><td class='l'>{_fmt(f['error'])}</td></tr>"
                for f in result["failed_cases"]]
        out.append("</table>")
    out.append("<h2>Cases, worst first</h2><p class='note'>Sorted by foreground-mean Dice (standard convention)."
               " Overlays: ground truth solid, prediction dashed.</p>")
    for case in sorted(result["metric_per_case"], key=lambda c: _sort_key(c["foreground_mean"]["standard"]["dice"])):
        name = case["case"]
        out.append(f"<h3>{_fmt(name)} — Dice {_fmt(case['foreground_mean']['standard']['dice'])}</h3><table><tr>"
                   "<th class='l'>class</th><th>Dice</th><th>HD95</th><th>ASSD</th><th>TP</th><th>FP</th><th>FN</th>"
                   "<th class='l'>empty mask</th></tr>")
        for k, name_k in classes.items():
            m = case["metrics"][str(k)]
            bad = " class='bad'" if m["empty"] in ("pred", "ref") else ""
            out.append(f"<tr{bad}><td class='l'>{k} {_fmt(name_k)}</td><td>{_fmt(m['standard']['dice'])}</td>"
                       f"<td>{_fmt(m['standard']['hd95'], 2)}</td><td>{_fmt(m['standard']['assd'], 2)}</td>"
                       f"<td>{m['tp']}</td><td>{m['fp']}</td><td>{m['fn']}</td><td class='l'>{m['empty']}</td></tr>")
        out.append("</table>")
        if overlays.get(name):
            out.append("<div class='ov'>" + "".join(_img_tag(p) for p in overlays[name]) + "</div>")
    out.append("</body></html>")
    return write_text(path, "\n".join(out))


def _sort_key(v) -> float:
    """Worst Dice first; cases without a value last."""
    return math.inf if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)
