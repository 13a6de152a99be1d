"""``smaformer predict -i INPUT -o OUTPUT -c CHECKPOINT [CHECKPOINT...]`` (nnU-Net / TotalSegmentator-style
flags)."""
from __future__ import annotations

import argparse

from smaformer.cli._common import add_model_args, add_parts_args, add_runtime_args, parse_postprocess
from smaformer.infer.pacs import predict_and_store
from smaformer.infer.predict import OUTPUT_TYPES

EPILOG = """examples:
  smaformer predict -i ct.nii.gz -o ct_seg.nii.gz -c runs/synapse/best.pt
  smaformer predict -i scans/ -o segs/ -c best.pt --device auto --precision bf16
  smaformer predict -i scans/ -o segs/ -c fold0/best.pt fold1/best.pt fold2/best.pt --tta   # ensemble + mirroring
  smaformer predict -i retina.tif -o vessels.png -c drive.pt --inference sliding
  smaformer predict -i ct.nii.gz -o seg.nii.gz -c best.pt --postprocess none      # skip the stored choice
  smaformer predict -i ct.nii.gz -o seg.nii.gz -c best.pt --postprocess min-size 200
  smaformer predict -i dicom_series/ -o seg.nii.gz -c model.safetensors        # + model.json sidecar
  smaformer predict -i dicom_series/ -o seg.dcm -c best.pt --output-type dicom-seg   # DICOM SEG for a PACS
  smaformer predict -i slice.png -o mask.png -c model.onnx --engine onnxruntime
  smaformer predict -i ct.nii.gz -o seg.nii.gz -c model.onnx --engine openvino --save-probabilities
  smaformer predict -i cohort/ -o segs/ -c best.pt --num-parts 8 --part-id $SLURM_ARRAY_TASK_ID   # 8 jobs
  torchrun --nproc_per_node=4 -m smaformer predict -i cohort/ -o segs/ -c best.pt    # 4 GPUs, one part each
  smaformer predict -i https://pacs/dicom-web/studies/1.2.3/series/1.2.3.4 -o seg.dcm -c best.pt \
      --output-type dicom-seg --store https://pacs/dicom-web   # from the archive and back (docs/INFERENCE.md)
  smaformer predict -i dimse://ORTHANC@pacs:4242/1.2.3 -o segs/ -c best.pt --output-type dicom-seg \
      --store dimse://ORTHANC@pacs:4242                          # DIMSE: C-FIND + C-GET, C-STORE

INPUT is a NIfTI file, a folder of NIfTI files, a DICOM series folder (or a folder of them), a PNG/JPG/
TIFF image or a folder of them, or an archive's study/series: a DICOMweb URL or dimse://AET@host:port/STUDY
[/SERIES] (DICOMweb credentials from SMAFORMER_PACS_USER and
SMAFORMER_PACS_PASSWORD, SMAFORMER_PACS_TOKEN or SMAFORMER_PACS_AUTH_FILE, never from the command line).
Volumes give a uint8 label NIfTI with the input's shape, affine and header
(checked before writing) and the class names in the header; 2D images give PNG masks of class ids.
--output-type dicom-seg writes, per DICOM series, a DICOM SEG that references the series' instances.
Preprocessing (window, channels, size) comes from each checkpoint. The post-processing chosen on
validation and stored in the checkpoint is applied unless --postprocess says otherwise.
Exit status 1 when any case failed.
"""


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.epilog = EPILOG
    p.add_argument("-i", "--input", required=True, help="file or folder to segment")
    p.add_argument("-o", "--output", required=True, help="output file (one case) or folder")
    add_model_args(p)
    p.add_argument("--output-type", choices=OUTPUT_TYPES, default="nifti",
                   help="nifti (default): a label NIfTI per volume (PNG/TIFF for 2D images); dicom-seg: a DICOM "
                        "SEG per DICOM series, referencing its instances, for a PACS or viewer; dicom-rtstruct: an "
                        "RT Structure Set (contours, one ROI per class) for radiotherapy")
    p.add_argument("--store", metavar="ARCHIVE", help="also send each SEG/RTSTRUCT to this archive after writing it "
                   "locally: a DICOMweb base URL (STOW-RS) or dimse://AET@host:port (C-STORE)")
    p.add_argument("--ae-title", help="our AE title over DIMSE (default $SMAFORMER_AE_TITLE, else SMAFORMER); the "
                   "archive must know it")
    p.add_argument("--save-probabilities", action="store_true",
                   help="also write <case>_probabilities.npz: float16 softmax (K, D, H, W)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_parts_args(p)
    add_runtime_args(p)


def run(args: argparse.Namespace) -> int:
    mode, min_size = parse_postprocess(args.postprocess)
    kwargs = dict(engine=args.engine, device=args.device, precision=args.precision, batch_size=args.batch_size,
                  tta=args.tta, inference=args.inference, postprocess=mode, min_size=min_size,
                  output_type=args.output_type, save_probabilities=args.save_probabilities, progress=not args.quiet,
                  num_parts=args.num_parts, part_id=args.part_id, torchrun=True, compile_model=args.compile)
    results = predict_and_store(args.input, args.output, args.checkpoint, store=args.store, ae_title=args.ae_title,
                                **kwargs)
    failed = [r for r in results if r.error]
    slices = sum(r.slices for r in results)
    seconds = sum(r.seconds for r in results)
    print(f"{len(results) - len(failed)}/{len(results)} cases segmented, {slices} slices in {seconds:.1f} s"
          + (f"; {len(failed)} failed" if failed else ""))
    return 1 if failed else 0
