"""Self-contained HTML architecture page (``smaformer info MODEL --html FILE``).

One real forward pass with hooks on every module records each module's output shape and the order in
which modules run. The page shows the data flow from input to output (the top-level stages in run order),
the full module tree (collapsible ``<details>``, no JavaScript) with output shapes and params per module,
and a flat table. Everything is inline: no CDN, no external fonts, scripts or images.
"""
from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from smaformer.io_utils import write_text


@dataclass
class ModuleRecord:
    """One module: dotted name, class, params (recursive), output shape, first-call order, call count."""

    name: str
    kind: str
    params: int
    shape: str = ""
    order: int = -1
    calls: int = 0
    container: bool = False


def _shape(out) -> str:
    if isinstance(out, torch.Tensor):
        return "(" + ", ".join(str(s) for s in out.shape) + ")"
    if isinstance(out, (list, tuple)):
        inner = [_shape(o) for o in out]
        return "[" + ", ".join(s for s in inner if s) + "]" if any(inner) else ""
    if isinstance(out, dict):
        return "{" + ", ".join(f"{k}: {_shape(v)}" for k, v in out.items() if _shape(v)) + "}"
    return ""


def trace_modules(model: nn.Module, x: torch.Tensor) -> tuple[list[ModuleRecord], str]:
    """Run ``model(x)`` once with forward hooks; return one record per module (named_modules order) and
    the output shape."""
    records: dict[str, ModuleRecord] = {}
    counter = [0]
    handles = []
    for name, mod in model.named_modules():
        rec = ModuleRecord(name, type(mod).__name__, sum(p.numel() for p in mod.parameters()),
                           container=isinstance(mod, (nn.ModuleList, nn.ModuleDict)))
        records[name] = rec

        def hook(_m, _inp, out, rec=rec):
            if rec.order < 0:
                rec.order = counter[0]
                counter[0] += 1
            rec.calls += 1
            rec.shape = _shape(out)

        handles.append(mod.register_forward_hook(hook))
    try:
        with torch.no_grad():
            out = model(x)
    finally:
        for h in handles:
            h.remove()
    for rec in records.values():  # a module whose forward never ran but whose children did is a container too
        if rec.order < 0 and rec.name and any(r.order >= 0 for n, r in records.items() if n.startswith(rec.name + ".")):
            rec.container = True
    return list(records.values()), _shape(out)


def flow_nodes(records: list[ModuleRecord]) -> list[ModuleRecord]:
    """Stages of the data flow: modules that ran whose ancestors are all the root or containers (ModuleList /
    ModuleDict, or modules whose children the model calls directly), sorted by when their forward
    *finished* first."""
    by_name = {r.name: r for r in records}

    def parent(name: str) -> str:
        return name.rsplit(".", 1)[0] if "." in name else ""

    def is_stage(r: ModuleRecord) -> bool:
        if not r.name or r.order < 0:
            return False
        p = parent(r.name)
        while p:
            if not by_name[p].container:
                return False
            p = parent(p)
        return True

    return sorted((r for r in records if is_stage(r)), key=lambda r: r.order)


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px;color:#1d2330;background:#f7f8fb}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 10px;border-bottom:1px solid #d5d9e2}
.meta{color:#4a5262;font-size:13px} code,.mono{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px}
.flow{display:flex;flex-direction:column;align-items:center;gap:0}
.node{background:#fff;border:1px solid #9aa7c0;border-radius:8px;padding:6px 14px;min-width:340px;text-align:center;
box-shadow:0 1px 2px #0001}
.node.io{background:#e8f1ff;border-color:#4c7bd9}.node b{font-size:14px}.node .mono{color:#365}
.node.step{background:#fff7e6;border-style:dashed}
.arrow{color:#5a6a8a;font-size:18px;line-height:20px}
details{margin-left:18px}summary{cursor:pointer;padding:2px 0}
.leaf{margin-left:32px;padding:2px 0}.kind{color:#7a3e9d}.shape{color:#1f6f43}.params{color:#8a5a00}
.bar{display:inline-block;height:8px;background:#c9a13b;border-radius:2px;vertical-align:middle;margin-left:6px}
.idle{color:#999} table{border-collapse:collapse;font-size:12px;background:#fff}
td,th{border:1px solid #dde1e8;padding:3px 8px;text-align:left} th{background:#eef1f6}
td.n{text-align:right}
"""


def _label(r: ModuleRecord, total: int) -> str:
    width = 0 if not total else max(1, round(120 * r.params / total)) if r.params else 0
    shape = (f'<span class="shape mono">{html.escape(r.shape)}</span>' if r.shape
             else f'<span class="idle">{"container" if r.container else "not run"}</span>')
    leaf = r.name.rsplit(".", 1)[-1] or "(model)"
    return (f'<span class="mono">{html.escape(leaf)}</span> <span class="kind">{html.escape(r.kind)}</span> '
            f'&rarr; {shape} <span class="params">{r.params:,} params</span>'
            f'<span class="bar" style="width:{width}px"></span>')


def _tree(records: list[ModuleRecord], total: int, open_depth: int = 2) -> str:
    children: dict[str, list[ModuleRecord]] = {}
    for r in records[1:]:
        children.setdefault(r.name.rsplit(".", 1)[0] if "." in r.name else "", []).append(r)

    def render(r: ModuleRecord, depth: int) -> str:
        kids = children.get(r.name, [])
        if not kids:
            return f'<div class="leaf">{_label(r, total)}</div>'
        inner = "".join(render(k, depth + 1) for k in kids)
        opened = " open" if depth < open_depth else ""
        return f"<details{opened}><summary>{_label(r, total)}</summary>{inner}</details>"

    return render(records[0], 0)


def render_page(records: list[ModuleRecord], input_shape: tuple[int, ...], output_shape: str, title: str,
                flops: int | None = None, steps: tuple[list[str], list[str]] = ([], [])) -> str:
    """The whole HTML document as a string; ``steps`` are the model's non-module input/output steps."""
    total = records[0].params
    flops_txt = f" &middot; {flops / 1e9:,.2f} GFLOP ({flops / 2e9:,.2f} GMAC) per forward" if flops else ""
    in_txt = "(" + ", ".join(str(s) for s in input_shape) + ")"
    flow = [f'<div class="node io"><b>input</b><br><span class="mono">{in_txt}</span></div>']
    flow += [f'<div class="arrow">&darr;</div><div class="node step">{html.escape(s)}</div>' for s in steps[0]]
    for r in flow_nodes(records):
        flow.append('<div class="arrow">&darr;</div>')
        flow.append(f'<div class="node"><b class="mono">{html.escape(r.name)}</b> <span class="kind">'
                    f'{html.escape(r.kind)}</span><br><span class="mono">{html.escape(r.shape)}</span> '
                    f'&middot; <span class="params">{r.params:,} params</span></div>')
    flow += [f'<div class="arrow">&darr;</div><div class="node step">{html.escape(s)}</div>' for s in steps[1]]
    flow += ['<div class="arrow">&darr;</div>',
             '<div class="node io"><b>output (logits)</b><br>'
             f'<span class="mono">{html.escape(output_shape)}</span></div>']
    rows = "".join(
        f'<tr><td class="mono">{html.escape(r.name or "(model)")}</td><td>{html.escape(r.kind)}</td>'
        f'<td class="mono">{html.escape(r.shape) or "&ndash;"}</td><td class="n">{r.params:,}</td>'
        f'<td class="n">{r.calls}</td></tr>' for r in records)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{_CSS}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<div class="meta">input {in_txt} &rarr; output {html.escape(output_shape)} &middot; {total:,} parameters{flops_txt}
&middot; shapes recorded from one real forward pass (Swin stages keep tokens channels-last: B, H, W, C)</div>
<h2>Data flow</h2>
<div class="flow">{''.join(flow)}</div>
<h2>Module tree</h2>
<div class="tree">{_tree(records, total)}</div>
<h2>All modules</h2>
<table><tr><th>module</th><th>type</th><th>output shape</th><th>params</th><th>calls</th></tr>{rows}</table>
</body></html>
"""


def write_arch_page(model: nn.Module, input_shape: tuple[int, ...], path: str | Path, title: str = "",
                    flops: int | None = None) -> Path:
    """Trace ``model`` on a zero input of ``input_shape`` and write the page to ``path``."""
    device = next(model.parameters(), torch.empty(0)).device
    was_training = model.training
    model.eval()
    try:
        records, out_shape = trace_modules(model, torch.zeros(input_shape, device=device))
    finally:
        model.train(was_training)
    steps = model.io_steps() if hasattr(model, "io_steps") else ([], [])
    return write_text(path, render_page(records, input_shape, out_shape, title or type(model).__name__, flops,
                                        steps))
