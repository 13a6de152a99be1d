"""``smaformer convert``: NIfTI pairs or volume datasets into the TransUNet Synapse layout."""
from __future__ import annotations

import argparse

from smaformer.errors import InputError
from smaformer.tools.convert import PairsReader, convert_to_synapse, parse_label_map


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.epilog = (
        "Examples:\n"
        "  smaformer convert --pair ct.nii.gz seg.nii.gz --labels totalseg -o synapse_like\n"
        "  smaformer convert Dataset017_BTCV/ --labels '1:7,2:4,3:3' --test-fraction 0.4 -o Synapse\n"
        "Windows: synapse (HU -125..275), abdomen, liver, lung, LO,HI, zscore, minmax or none (MR).")
    p.add_argument("source", nargs="?", help="dataset folder (nnU-Net raw, images/+labels/, ACDC/LiTS raw)")
    p.add_argument("--pair", nargs=2, action="append", metavar=("IMAGE", "LABEL"), default=[],
                   help="an image/label NIfTI pair (repeatable) instead of a folder")
    p.add_argument("-o", "--out", required=True, help="output folder (Synapse layout)")
    p.add_argument("--layout", help="source layout when auto-detection is not wanted")
    p.add_argument("--window", default="synapse", help="intensity window or normalisation (default: synapse)")
    p.add_argument("--labels", help="label remapping 'src:dst,...', a JSON file, or 'totalseg' (-> Synapse ids)")
    p.add_argument("--num-classes", type=int, help="number of output classes (default: 9 with --labels)")
    p.add_argument("--test", help="comma-separated source case names for the test split")
    p.add_argument("--test-fraction", type=float, default=0.4, help="random test share when --test is not given")
    p.add_argument("--seed", type=int, default=0, help="seed of the random split")
    p.add_argument("--keep-names", action="store_true", help="keep source case names instead of caseNNNN")


def run(args: argparse.Namespace) -> int:
    if bool(args.source) == bool(args.pair):
        raise InputError(None, "give either a SOURCE folder or one or more --pair IMAGE LABEL")
    source = PairsReader(args.pair) if args.pair else args.source
    rec = convert_to_synapse(source, args.out, window=args.window, label_map=parse_label_map(args.labels),
                             num_classes=args.num_classes, test_fraction=args.test_fraction, seed=args.seed,
                             test_cases=[c.strip() for c in args.test.split(",")] if args.test else None,
                             keep_names=args.keep_names, layout=args.layout)
    splits = [c["split"] for c in rec["cases"].values()]
    print(f"{args.out}: {splits.count('train')} train cases "
          f"({sum(c['shape'][0] for c in rec['cases'].values() if c['split'] == 'train')} slices), "
          f"{splits.count('test')} test volumes")
    for case, fault in rec["failed"]:
        print(f"skipped {case}: {fault}")
    return 1 if rec["failed"] else 0
