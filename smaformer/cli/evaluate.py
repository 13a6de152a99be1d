"""``smaformer evaluate``: score a checkpoint on a dataset's volumes; writes metrics.json, summary.csv,
report.html, overlays and (optionally) NIfTI predictions."""
from __future__ import annotations

import argparse
import math
import os

from smaformer.cli._common import add_model_args, add_parts_args, add_runtime_args, parse_postprocess
from smaformer.errors import InputError

EPILOG = """examples:
  smaformer evaluate -c runs/acdc/best.pt -d ../shared/data/acdc -o eval/acdc --split val --overlays 2
  smaformer evaluate -c best.pt -d data/synapse -o eval/legacy --split test --legacy-resize --postprocess lcc
  smaformer evaluate -c f0/best.pt f1/best.pt f2/best.pt -d ../shared/data/acdc -o eval/ens --tta   # ensemble
  smaformer evaluate -c best.pt -d ../shared/data/acdc -o eval/pp --choose-postprocessing        # stored in best.pt
  smaformer evaluate -c best.pt -d ../shared/data/drive -o eval/drive --split test --inference sliding
  smaformer evaluate -c model.onnx best.pt -d ../shared/data/acdc -o eval/mixed --engine openvino  # ONNX members
  smaformer evaluate --cross-validation runs/f0 runs/f1 runs/f2 runs/f3 runs/f4 -o eval/cv   # pooled folds
  torchrun --nproc_per_node=4 -m smaformer evaluate -c best.pt -d data/ct -o eval/ct   # 4 GPUs, one metrics.json
  smaformer evaluate -c best.pt -d data/ct -o eval/ct --num-parts 8 --part-id $SLURM_ARRAY_TASK_ID
  smaformer evaluate --merge-parts -o eval/ct              # once the 8 parts are done: one metrics.json

Both conventions are always reported: 'standard' (NaN when both masks are empty, diagonal HD95 when one is)
and 'legacy' (the TransUNet/Swin-Unet rule, HD95 in voxels), plus slice-level Dice with its empty/empty rule.
--choose-postprocessing scores the raw predictions, decides per class whether keeping the largest component
or dropping components under a size helps Dice, reports before/after and stores the decision in a single
checkpoint (predict and evaluate then apply it by default). Choose it on validation data, never on test.
"""


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.epilog = EPILOG
    add_model_args(p, required=False)
    p.add_argument("-d", "--data", help="dataset folder (any layout open_dataset knows)")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--split", default="val", help="dataset split to evaluate (default: val)")
    p.add_argument("--layout", help="dataset layout (default: auto-detect)")
    p.add_argument("--legacy-resize", action="store_true",
                   help="zoom the argmax back with order 0 like the official scripts (default: resize logits)")
    p.add_argument("--choose-postprocessing", action="store_true",
                   help="choose per-class post-processing on this data (validation!) and store it in the checkpoint")
    p.add_argument("--save-nifti", action="store_true", help="write predictions as NIfTI under predictions/")
    p.add_argument("--overlays", type=int, default=3, metavar="K", help="overlay slices per case (default: 3)")
    p.add_argument("--cases", nargs="+", metavar="CASE", help="only these cases")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--cross-validation", nargs="+", metavar="RUN_DIR",
                   help="instead of -c/-d: pool the validation results of these fold runs into one summary")
    p.add_argument("--merge-parts", action="store_true",
                   help="instead of -c/-d: pool the metrics_part*_of_N.json that --num-parts jobs wrote into -o")
    add_parts_args(p)
    add_runtime_args(p)


def run(args: argparse.Namespace) -> int:
    from smaformer.infer.evaluate import evaluate, merge_part_files
    from smaformer.infer.postprocess import describe_postprocessing

    if args.merge_parts:
        if args.checkpoint or args.data or args.cross_validation:
            raise InputError(None, "--merge-parts pools finished parts from -o; drop -c/-d/--cross-validation")
        res = merge_part_files(args.output)
        _print_table(res)
        print(f"{res['data']['parts']} parts, {res['data']['n_cases']} cases, {res['data']['n_failed']} failed "
              f"-> {args.output}/metrics.json")
        return 0
    if args.cross_validation:
        if args.checkpoint or args.data:
            raise InputError(None, "--cross-validation pools finished fold runs; drop -c/-d")
        return _cross_validation(args)
    if not args.checkpoint or not args.data:
        raise InputError(None, "evaluate needs -c CHECKPOINT and -d DATA (or --cross-validation RUN_DIR...)")
    mode, min_size = parse_postprocess(args.postprocess)
    res = evaluate(args.checkpoint, args.data, args.output, split=args.split, layout=args.layout,
                   legacy_resize=args.legacy_resize, postprocess=mode, min_size=min_size,
                   choose_postprocessing=args.choose_postprocessing, tta=args.tta, inference=args.inference,
                   engine=args.engine,
                   save_nifti=args.save_nifti, overlays=args.overlays, device=args.device,
                   batch_size=args.batch_size, precision=args.precision, cases=args.cases,
                   progress=not args.no_progress, num_parts=args.num_parts, part_id=args.part_id, torchrun=True,
                   compile_model=args.compile)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0        # torchrun: rank 0 wrote and reports the merged result
    _print_table(res)
    part = res["data"].get("part")
    if part:
        print(f"part {part['part_id']} of {part['num_parts']}: {res['data']['n_cases']} of {len(part['cases'])} "
              f"cases scored -> {args.output}/metrics_part{part['part_id']}_of_{part['num_parts']}.json; when "
              f"every part is done: smaformer evaluate --merge-parts -o {args.output}")
        return 1 if res["failed_cases"] and not res["metric_per_case"] else 0
    unit = res["conventions"]["hd95_unit"]
    print(f"HD95 in {unit} (legacy HD95 in voxels); {res['data']['n_cases']} cases, "
          f"{res['data']['n_failed']} failed; report: {args.output}/report.html")
    pp = res.get("postprocessing")
    if pp:
        for k, rule in pp["per_class"].items():
            if k in pp["dice_before"]:
                print(f"post-processing {k} {res['classes'][k]}: {describe_postprocessing({'per_class': {k: rule}})}"
                      f" (validation Dice {pp['dice_before'][k]:.4f} -> {pp['dice_after'][k]:.4f})")
        print(f"stored in {pp['stored_in']}" if pp.get("stored_in") else "not stored (see metrics.json)")
    for fc in res["failed_cases"]:
        print(f"failed: {fc['case']}: {fc['error']}")
    return 1 if res["failed_cases"] and not res["metric_per_case"] else 0


def _f(v, d=4):
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{d}f}"


def _print_table(res: dict) -> None:
    print(f"{'class':<20} {'Dice':>7} {'HD95':>8} {'legacy Dice':>11} {'legacy HD95':>11} {'slice Dice':>10}")
    rows = [(f"{k} {name}", res["mean"][k]) for k, name in res["classes"].items()]
    for label, m in rows + [("foreground mean", res["foreground_mean"])]:
        print(f"{label:<20} {_f(m['standard']['dice']):>7} {_f(m['standard']['hd95'], 2):>8} "
              f"{_f(m['legacy']['dice']):>11} {_f(m['legacy']['hd95'], 2):>11} {_f(m['slice']['dice']):>10}")


def _cross_validation(args: argparse.Namespace) -> int:
    from smaformer.infer.crossval import pool_cross_validation

    res = pool_cross_validation(args.cross_validation, args.output)
    for f in res["folds"]:
        print(f"fold {f['fold']}: {f['n_cases']} cases, mean Dice "
              f"{_f(((f['foreground_mean'] or {}).get('standard') or {}).get('dice'))} "
              f"({f['run']})")
    _print_table(res)
    print(f"{res['n_cases']} validation cases of {len(res['folds'])} folds pooled -> {args.output}/metrics.json")
    return 0
