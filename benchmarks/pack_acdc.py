"""Pack the ACDC data (SSL4MIS h5 layout) into one compressed npz small enough to travel to a device
machine (its working tree is capped at 64 MiB; ``../shared/data/acdc`` is 107 MB of float32 h5), and
unpack it there into the same layout.

Images are stored as uint8, ``round(image * 255)`` (they are scaled to [0, 1], so the error is at most
0.5/255), labels as they are; all arrays of one kind are concatenated into one flat array (one deflate
stream compresses far better than 2,664 small ones). After writing, the pack is unpacked into a temp
folder and compared file by file with the original: same names and shapes, identical labels, images
within 0.5/255 + 1e-6.

The device image lacks nibabel, which ``import smaformer`` needs; the pure-Python package is copied from
this environment into ``<out folder>/site`` (without its tests), and ``gpu_check.py`` puts it on the path
when the import fails there.

    python benchmarks/pack_acdc.py                        # ../shared/data/acdc -> pack/acdc_u8.npz
    python benchmarks/pack_acdc.py --limit 40 4 --out /tmp/tiny.npz   # 40 slices, 4 volumes
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = Path(os.environ.get("SMAFORMER_SHARED", REPO.parent / "shared")) / "data" / "acdc"
DEFAULT_OUT = REPO / "pack" / "acdc_u8.npz"
FORMAT = "smaformer-acdc-u8/1"
LISTS = (("train_slices.list", "slices"), ("val.list", "volumes"))   # list file -> folder of its h5 files
TOLERANCE = 0.5 / 255 + 1e-6
SIZE_LIMIT = 64 * 2**20
DEVICE_MISSING = ("nibabel",)   # imported by smaformer, absent from the device image (KINDS.md's list)


def listed(root: Path, limit: tuple[int, int] | None = None) -> list[tuple[str, str, str]]:
    """(list file, folder, name) for every listed case, the first ``limit`` of each list when given."""
    out = []
    for i, (lst, folder) in enumerate(LISTS):
        names = [ln.strip() for ln in (root / lst).read_text(encoding="utf-8").splitlines() if ln.strip()]
        out += [(lst, folder, n) for n in (names[: limit[i]] if limit else names)]
    return out


def read_h5(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with h5py.File(path, "r") as f:
        return f["image"][()], f["label"][()]


def quantise(image: np.ndarray) -> np.ndarray:
    """float [0, 1] -> uint8 ``round(image * 255)``."""
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def dequantise(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float32) / np.float32(255.0)


def pack(root: Path, out: Path, limit: tuple[int, int] | None = None) -> dict:
    """Write the npz; returns its size and counts."""
    entries = listed(root, limit)
    images, labels, shapes = [], [], []
    for _, folder, name in entries:
        image, label = read_h5(root / folder / f"{name}.h5")
        if image.shape != label.shape:
            raise ValueError(f"{root / folder / name}.h5: image {image.shape} and label {label.shape} differ")
        images.append(quantise(image).ravel())
        labels.append(label.astype(np.uint8).ravel())
        shapes.append(image.shape)
    sizes = np.array([a.size for a in images], np.int64)
    lists = {lst: "\n".join(n for lf, _, n in entries if lf == lst) + "\n" for lst, _ in LISTS}
    arrays = {
        "format": np.array(FORMAT), "names": np.array([n for *_, n in entries]),
        "folders": np.array([f for _, f, _ in entries]),
        "ndims": np.array([len(s) for s in shapes], np.int8),
        "shapes": np.array([(1,) * (3 - len(s)) + tuple(s) for s in shapes], np.int32),
        "offsets": np.concatenate([[0], np.cumsum(sizes)]),
        "images": np.concatenate(images), "labels": np.concatenate(labels),
        "list_files": np.array(list(lists)), "list_texts": np.array(list(lists.values())),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.stem + ".partial.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, out)
    return {"path": str(out), "bytes": out.stat().st_size, "n_slices": int(sum(f == "slices" for _, f, _ in entries)),
            "n_volumes": int(sum(f == "volumes" for _, f, _ in entries)), "raw_uint8_bytes": int(2 * sizes.sum())}


def unpack(npz: Path, dest: Path) -> dict:
    """Rebuild ``dest/{slices,volumes}/*.h5`` and the list files from the npz; returns counts."""
    with np.load(npz, allow_pickle=False) as f:
        if str(f["format"]) != FORMAT:
            raise ValueError(f"{npz}: format {f['format']} is not {FORMAT}")
        a = {k: f[k] for k in f.files}
    for folder in set(a["folders"].tolist()):
        (dest / folder).mkdir(parents=True, exist_ok=True)
    off = a["offsets"]
    for i, (name, folder) in enumerate(zip(a["names"].tolist(), a["folders"].tolist(), strict=True)):
        shape = tuple(int(s) for s in a["shapes"][i][3 - int(a["ndims"][i]):])
        with h5py.File(dest / folder / f"{name}.h5", "w") as h:
            h["image"] = dequantise(a["images"][off[i]:off[i + 1]].reshape(shape))
            h["label"] = a["labels"][off[i]:off[i + 1]].reshape(shape)
    for lst, text in zip(a["list_files"].tolist(), a["list_texts"].tolist(), strict=True):
        (dest / lst).write_text(text, encoding="utf-8")
    depths = [int(s[0]) for s, fo in zip(a["shapes"], a["folders"].tolist(), strict=True) if fo == "volumes"]
    return {"root": str(dest), "n_slices": int((a["folders"] == "slices").sum()), "n_volumes": len(depths),
            "n_volume_slices": int(sum(depths))}


def compare(root: Path, unpacked: Path, limit: tuple[int, int] | None = None) -> dict:
    """The unpacked copy against the original: names, shapes, labels, image error; ``ok`` when all hold."""
    entries = listed(root, limit)
    names_equal = listed(unpacked) == entries
    max_err, shapes_equal, labels_identical, dtypes_equal = 0.0, True, True, True
    for _, folder, name in entries:
        image, label = read_h5(root / folder / f"{name}.h5")
        image2, label2 = read_h5(unpacked / folder / f"{name}.h5")
        shapes_equal &= image.shape == image2.shape and label.shape == label2.shape
        dtypes_equal &= image2.dtype == np.float32 and label2.dtype == label.dtype
        if image.shape == image2.shape:
            max_err = max(max_err, float(np.abs(image.astype(np.float64) - image2).max(initial=0.0)))
        labels_identical &= label.shape == label2.shape and bool(np.array_equal(label, label2))
    ok = names_equal and shapes_equal and labels_identical and dtypes_equal and max_err <= TOLERANCE
    return {"n_files": len(entries), "names_equal": names_equal, "shapes_equal": shapes_equal,
            "dtypes_ok": dtypes_equal, "labels_identical": labels_identical, "max_abs_image_error": max_err,
            "tolerance": TOLERANCE, "ok": ok}


def vendor(dest: Path, packages: tuple[str, ...] = DEVICE_MISSING) -> list[str]:
    """Copy these pure-Python packages (no tests, no caches) from this environment into ``dest``."""
    done = []
    for name in packages:
        src = Path(__import__(name).__file__).parent
        target = dest / name
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(src, target, ignore=shutil.ignore_patterns("tests", "__pycache__", "*.pyc"))
        done.append(f"{name} {getattr(sys.modules[name], '__version__', '?')}")
    return done


def write_fake(root: Path, n_patients: int = 3, seed: int = 0) -> Path:
    """A tiny dataset in the SSL4MIS layout (for tests and the dry run): per patient 4 slices of 40x48 and
    one (3, 40, 48) volume, with disc-shaped labels 1-3 so that a model can learn something."""
    rng = np.random.default_rng(seed)
    (root / "slices").mkdir(parents=True, exist_ok=True)
    (root / "volumes").mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:40, :48]
    train, val = [], []

    def case(depth: int) -> tuple[np.ndarray, np.ndarray]:
        cy, cx, r = rng.uniform(14, 26), rng.uniform(16, 32), rng.uniform(6, 10)
        d = np.hypot(yy - cy, xx - cx)
        label = np.select([d < r / 2, d < r, d < r * 1.4], [3, 2, 1], 0).astype(np.uint8)
        image = np.clip(label * 0.2 + rng.normal(0.1, 0.05, (depth, 40, 48)), 0, 1).astype(np.float32)
        return image, np.broadcast_to(label, image.shape).copy()

    for p in range(n_patients):
        for s in range(4):
            image, label = case(1)
            train.append(f"patient{p + 1:03d}_frame01_slice_{s}")
            with h5py.File(root / "slices" / f"{train[-1]}.h5", "w") as h:
                h["image"], h["label"] = image[0], label[0]
        image, label = case(3)
        val.append(f"patient{p + 101:03d}_frame01")
        with h5py.File(root / "volumes" / f"{val[-1]}.h5", "w") as h:
            h["image"], h["label"] = image, label
    (root / "train_slices.list").write_text("\n".join(train) + "\n", encoding="utf-8")
    (root / "val.list").write_text("\n".join(val) + "\n", encoding="utf-8")
    return root


def pack_and_check(root: Path, out: Path, limit: tuple[int, int] | None = None, with_site: bool = True) -> dict:
    """Pack, unpack into a temp folder, compare; the record that ``main`` prints."""
    t0 = time.perf_counter()
    record = {"source": str(root), **pack(root, out, limit)}
    record["pack_s"] = round(time.perf_counter() - t0, 1)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        unpack(out, Path(tmp))
        record["unpack_s"] = round(time.perf_counter() - t0, 1)
        record["check"] = compare(root, Path(tmp), limit)
    record["under_64_mib"] = record["bytes"] < SIZE_LIMIT
    if with_site:
        record["site"] = vendor(out.parent / "site")
    return record


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=DEFAULT_ROOT, help=f"ACDC h5 folder (default {DEFAULT_ROOT})")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="npz to write (default pack/acdc_u8.npz)")
    ap.add_argument("--limit", type=int, nargs=2, metavar=("SLICES", "VOLUMES"), help="pack only the first N of each")
    ap.add_argument("--no-site", action="store_true", help="do not copy nibabel into <out folder>/site")
    args = ap.parse_args(argv)
    record = pack_and_check(args.root, args.out, tuple(args.limit) if args.limit else None, not args.no_site)
    print(json.dumps(record, indent=1))
    print(f"packed {record['n_slices']} slices + {record['n_volumes']} volumes into {args.out}: "
          f"{record['bytes'] / 2**20:.1f} MiB ({'under' if record['under_64_mib'] else 'OVER'} 64 MiB); "
          f"round trip {'ok' if record['check']['ok'] else 'FAILED'} (max image error "
          f"{record['check']['max_abs_image_error']:.2e}, limit {TOLERANCE:.2e})")
    return 0 if record["check"]["ok"] and record["under_64_mib"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
