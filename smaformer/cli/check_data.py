"""``smaformer check-data PATH``: detect a dataset layout, read every case and report faults (exit 1 on any)."""
from __future__ import annotations

import argparse

from smaformer.data.formats import LAYOUTS
from smaformer.tools.check_data import check_dataset, format_report, write_fingerprint


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.epilog = ("Examples:\n  smaformer check-data ../shared/data/acdc\n"
                "  smaformer check-data my_dataset/ --layout image_folder --classes background,tumour --all\n"
                "  smaformer check-data ../shared/data/acdc --split train --fingerprint acdc_fingerprint.json\n\n"
                "--fingerprint writes each checked split's dataset fingerprint (per case: spacing, shape, "
                "intensity\npercentiles 0.5/50/99.5, class frequencies; plus a summary), as training stores "
                "in checkpoints.")
    p.add_argument("path", help="dataset folder")
    p.add_argument("--layout", choices=sorted(LAYOUTS), help="skip auto-detection")
    p.add_argument("--split", help="check one split only (default: every split the layout has)")
    p.add_argument("--classes", help="comma-separated class names (sets the allowed label range)")
    p.add_argument("--limit", type=int, help="check only the first N cases of each split")
    p.add_argument("--all", action="store_true", help="print every case (default: the first 20 per split)")
    p.add_argument("--fingerprint", metavar="OUT.json",
                   help="also write the dataset fingerprint of each checked split to this JSON file")


def run(args: argparse.Namespace) -> int:
    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    report = check_dataset(args.path, layout=args.layout, split=args.split, limit=args.limit, classes=classes,
                           fingerprint=bool(args.fingerprint))
    print(format_report(report, None if args.all else 20))
    if args.fingerprint:
        print(f"fingerprint: {write_fingerprint(report, args.fingerprint)}")
    return 1 if report.num_faults else 0
