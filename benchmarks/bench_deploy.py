"""Deployment table: the same trained checkpoint run as eager fp32/bf16, ONNX Runtime fp32, OpenVINO IR fp32,
OpenVINO IR INT8 (NNCF + the Dice guard) and fp16 ONNX (ORT CPU, parity only), each with its mean Dice on a
split, its latency at batch 1 and 8 (slices/s), its peak RSS and its file size; and the full-size Swin-Unet
224 (random weights: speed only) as INT8 IR variants against eager fp32 at batch 8.

Latencies of one table are measured in one process, interleaved (each round times every deployment once;
medians of the rounds), so a ratio never compares different loads. Peak RSS is a fresh process per
deployment that loads the file and runs three batches of 8.

    python benchmarks/bench_deploy.py table -c swin=runs/a/latest.pt smaformer=runs/b/latest.pt \\
        --data ../shared/data/acdc --work /tmp/deploy --json docs/bench/deploy.json
    python benchmarks/bench_deploy.py speed224 --work /tmp/deploy224
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from smaformer.runtime import autocast, cpu_description  # noqa: E402

#: the TorchScript-based ONNX exporter first: 3-5x faster than dynamo on a loaded 2-core machine; both are
#: held to the same parity check, and ``export`` falls back the other way by default
EXPORTERS = ("torchscript", "dynamo")
#: deployment -> (file kind, engine, precision)
DEPLOYMENTS = {"eager fp32": ("pt", "torch", "fp32"), "eager bf16": ("pt", "torch", "bf16"),
               "ONNX Runtime fp32": ("onnx", "onnxruntime", "fp32"), "OpenVINO fp32": ("xml", "openvino", "fp32"),
               "OpenVINO INT8": ("int8.xml", "openvino", "fp32"),
               "OpenVINO INT8, CNN scheme": ("int8cnn.xml", "openvino", "fp32"),
               "ONNX fp16 (ORT CPU)": ("fp16.onnx", "onnxruntime", "fp32")}


def cpu_flags() -> str:
    """The vector/matrix flags that decide INT8 and bf16 speed (avx2, avx512 VNNI/bf16, AMX)."""
    want = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile")
    flags = next((ln.split(":", 1)[1].split() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                  if ln.startswith("flags")), [])
    return " ".join(f for f in want if f in flags) or "none of " + " ".join(want)


def _runner(path: Path, engine: str, precision: str):
    """``f(x) -> logits`` for a batch at model size, and the file's info."""
    from smaformer.infer.members import load_predictor

    model, info = load_predictor(path, engine)
    if isinstance(model, torch.nn.Module):
        model.eval()

        def run(x):
            with torch.inference_mode(), autocast(precision, "cpu"):
                return model(x)
        return run, info
    return model, info


def _size_mib(path: Path) -> float:
    files = [path, path.with_suffix(".bin")] if path.suffix == ".xml" else [path]
    return sum(f.stat().st_size for f in files if f.exists()) / 2**20


def _input(info: dict, batch: int) -> torch.Tensor:
    pre = info["preprocessing"]
    size = tuple(int(s) for s in pre["img_size"])
    return torch.rand(batch, int(pre["in_chans"]), *size, generator=torch.Generator().manual_seed(0))


def interleaved(runs: dict, batches: tuple[int, ...], rounds: int, calls: int) -> dict:
    """Slices/s per (name, batch): median over ``rounds`` rounds, each timing ``calls`` calls of every run."""
    times: dict = {(n, b): [] for n in runs for b in batches}
    for run, info in runs.values():            # warm-up (OpenVINO / ORT compile lazily)
        for b in batches:
            run(_input(info, b))
    for _ in range(rounds):
        for n, (run, info) in runs.items():
            for b in batches:
                x = _input(info, b)
                t0 = time.perf_counter()
                for _ in range(calls):
                    run(x)
                times[(n, b)].append((time.perf_counter() - t0) / calls)
    return {f"{n}|b{b}": b / float(np.median(v)) for (n, b), v in times.items()}


def vm_hwm_kib() -> int:
    """This process's peak resident set (KiB), from /proc/self/status."""
    line = next(ln for ln in Path("/proc/self/status").read_text().splitlines() if ln.startswith("VmHWM:"))
    return int(line.split()[1])


def peak_rss(path: Path, engine: str, precision: str) -> float:
    """MiB, a fresh process: load, then three batches of 8. VmHWM, not ru_maxrss: Linux carries ru_maxrss over
    from the parent through fork and exec, so a child of a big benchmark would report the parent's peak."""
    code = (f"import sys; sys.path.insert(0,{str(REPO / 'benchmarks')!r}); import bench_deploy as b; "
            f"from pathlib import Path; r,i=b._runner(Path({str(path)!r}),{engine!r},{precision!r}); x=b._input(i,8); "
            "[r(x) for _ in range(3)]; print(b.vm_hwm_kib())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ,
                         "PYTHONPATH": str(REPO)}, check=True).stdout.split()
    return int(out[-1]) / 1024


def export_all(ckpt: Path, work: Path, data: Path) -> dict:
    """The exported files of a checkpoint (an INT8 one may be refused: its line is kept)."""
    from smaformer.export import export_checkpoint
    from smaformer.infer.quantize import Int8Quantizer, Int8Spec

    work.mkdir(parents=True, exist_ok=True)
    files, log = {"pt": ckpt}, {}
    for kind, fmt, kw in (("onnx", "onnx", {}), ("xml", "openvino", {}), ("fp16.onnx", "onnx", {"fp16": True}),
                          ("int8.xml", "openvino", {"quantize": Int8Quantizer(Int8Spec(data))}),
                          ("int8cnn.xml", "openvino", {"quantize": Int8Quantizer(Int8Spec(data, scheme="cnn"))})):
        out = work / f"model.{kind}"
        t0 = time.perf_counter()
        try:
            res = export_checkpoint(ckpt, out, fmt, EXPORTERS, **kw)
            files[kind], log[kind] = out, res.summary()
        except Exception as e:  # noqa: BLE001 - a refused INT8 file is a result of the table
            log[kind] = f"{type(e).__name__}: {e}"
        log[kind] += f"\n  ({time.perf_counter() - t0:.0f} s)"
        print(log[kind], flush=True)
    return {"files": files, "log": log}


def table(args) -> dict:
    from bench_accuracy import compare_labels

    from smaformer.infer.evaluate import evaluate

    torch.set_num_threads(args.threads)
    record = {"cpu": cpu_description(), "cpu_flags": cpu_flags(), "threads": args.threads,
              "date_utc": time.strftime("%Y-%m-%d %H:%M"),
              "load_start": os.getloadavg(), "models": {}}
    for spec in args.checkpoints:
        name, ckpt = spec.split("=", 1)
        work = args.work / name
        exp = export_all(Path(ckpt), work, args.data)
        rows, runs = {}, {}
        for dep, (kind, engine, precision) in DEPLOYMENTS.items():
            if kind not in exp["files"]:
                rows[dep] = {"refused": exp["log"][kind]}
                continue
            path = exp["files"][kind]
            ev = evaluate(path, args.data, work / f"eval_{kind}_{precision}", split=args.split, postprocess="none",
                          overlays=0, progress=False, engine=engine, precision=precision, device="cpu",
                          save_nifti=dep.startswith("eager"))
            rows[dep] = {"dice": 100 * ev["foreground_mean"]["standard"]["dice"], "size_mib": _size_mib(path),
                         "peak_rss_mib": peak_rss(path, engine, precision)}
            runs[dep] = _runner(path, engine, precision)
            print(dep, rows[dep], flush=True)
        speed = interleaved(runs, (1, 8), args.rounds, args.calls)
        for dep in runs:
            rows[dep].update({"b1_slices_s": speed[f"{dep}|b1"], "b8_slices_s": speed[f"{dep}|b8"]})
        labels = compare_labels(work / "eval_pt_fp32", work / "eval_pt_bf16")
        record["models"][name] = {"checkpoint": str(ckpt), "rows": rows, "export_log": exp["log"],
                                  "bf16_vs_fp32_labels": {k: v for k, v in labels.items() if k != "per_case"}}
    record["load_end"] = os.getloadavg()
    return record


def latency(args) -> dict:
    """Only the interleaved latencies, on the files a ``table`` run left in ``--work/NAME`` (a repeat)."""
    torch.set_num_threads(args.threads)
    record = {"cpu": cpu_description(), "cpu_flags": cpu_flags(), "threads": args.threads,
              "date_utc": time.strftime("%Y-%m-%d %H:%M"), "load_start": os.getloadavg(), "models": {}}
    for spec in args.checkpoints:
        name, ckpt = spec.split("=", 1)
        runs = {}
        for dep, (kind, engine, precision) in DEPLOYMENTS.items():
            path = Path(ckpt) if kind == "pt" else args.work / name / f"model.{kind}"
            if path.exists():
                runs[dep] = _runner(path, engine, precision)
        record["models"][name] = interleaved(runs, (1, 8), args.rounds, args.calls)
    record["load_end"] = os.getloadavg()
    return record


def speed224(args) -> dict:
    """Full-size Swin-Unet 224, random weights: eager fp32 vs OpenVINO fp32 / INT8 variants at batch 8."""
    import nncf
    import openvino as ov

    from smaformer.checkpoint import build_checkpoint, default_preprocessing, save_checkpoint
    from smaformer.export import export_checkpoint
    from smaformer.export.openvino import F32
    from smaformer.models import create_model

    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = create_model("swin_unet", img_size=224, num_classes=4).eval()
    ck = save_checkpoint(build_checkpoint(model, ["bg", "rv", "myo", "lv"], default_preprocessing((224, 224), 3)),
                         args.work / "swin224.pt")
    export_checkpoint(ck, args.work / "fp32.xml", "openvino", EXPORTERS)
    core = ov.Core()
    fp32 = core.read_model(str(args.work / "fp32.xml"))
    calib = nncf.Dataset([np.random.default_rng(i).random((1, 3, 224, 224), dtype=np.float32) for i in range(16)])
    variants = {
        "INT8 transformer scheme (NNCF default for transformers: MatMul/Linear)": dict(
            model_type=nncf.ModelType.TRANSFORMER, preset=nncf.QuantizationPreset.MIXED),
        "INT8 CNN scheme (all quantizable ops: MatMul, Conv, Add, Mul...)": dict(
            preset=nncf.QuantizationPreset.PERFORMANCE),
    }
    runs = {"eager fp32": (lambda x: model(x), None)}

    def compiled(m, hint):
        c = core.compile_model(m, "CPU", hint)
        out = c.output(0)
        return lambda x: c(x.numpy())[out]

    runs["OpenVINO fp32"] = (compiled(fp32, F32), None)
    for name, kw in variants.items():
        q = nncf.quantize(fp32, calib, subset_size=16, **kw)
        runs[name] = (compiled(q, F32), None)
        if args.bf16:
            runs[name + " + bf16 rest"] = (compiled(q, {"INFERENCE_PRECISION_HINT": "bf16"}), None)
    if args.bf16:
        runs["OpenVINO bf16"] = (compiled(fp32, {"INFERENCE_PRECISION_HINT": "bf16"}), None)
    x = torch.rand(8, 3, 224, 224)
    for fn, _ in runs.values():
        with torch.inference_mode():
            fn(x)
    times = {n: [] for n in runs}
    for _ in range(args.rounds):
        for n, (fn, _) in runs.items():
            t0 = time.perf_counter()
            with torch.inference_mode():
                fn(x)
            times[n].append(time.perf_counter() - t0)
    med = {n: float(np.median(v)) for n, v in times.items()}
    base = med["eager fp32"]
    return {"cpu": cpu_description(), "cpu_flags": cpu_flags(), "threads": args.threads, "batch": 8,
            "rounds": args.rounds,
            "date_utc": time.strftime("%Y-%m-%d %H:%M"), "load": os.getloadavg(),
            "seconds": med, "ratio_to_eager_fp32": {n: v / base for n, v in med.items()},
            "peak_rss_mib_all_variants_loaded": vm_hwm_kib() / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("table")
    lat = sub.add_parser("latency", help="repeat the latencies of a table run on its files")
    for p in (t, lat):
        p.add_argument("-c", "--checkpoints", nargs="+", required=True, metavar="NAME=CKPT")
    t.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "acdc")
    t.add_argument("--split", default="val")
    s = sub.add_parser("speed224")
    s.add_argument("--bf16", action="store_true", help="also OpenVINO's bf16 hint (meaningful on bf16-unit CPUs)")
    for p in (t, lat, s):
        p.add_argument("--work", type=Path, required=True)
        p.add_argument("--threads", type=int, default=2)
        p.add_argument("--rounds", type=int, default=5)
        p.add_argument("--calls", type=int, default=3)
        p.add_argument("--json", type=Path)
    args = ap.parse_args()
    record = {"table": table, "latency": latency, "speed224": speed224}[args.cmd](args)
    text = json.dumps(record, indent=1, default=str)
    print(text)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
