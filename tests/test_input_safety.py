"""Inputs are sacred and outputs are checked before the work: every command that writes refuses, in one line
(exit 2) and before loading a model, an output that is or would write over an input, and an output that cannot
be written. The inputs' bytes are compared after each refusal."""
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import pytest
from tiny_models import nifti_cases, tiny_unet_checkpoint

from smaformer.cli import main
from smaformer.errors import InputError
from smaformer.io_utils import STALE_TEMP_S, atomic_path, check_output, clean_stale_temps
from smaformer.train.rundir import claim_run_dir


def _digest(*paths: Path) -> dict[str, str]:
    files = [f for p in paths for f in ([p] if p.is_file() else sorted(p.rglob("*")))]
    return {str(f): hashlib.sha256(f.read_bytes()).hexdigest() for f in files if f.is_file()}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return tiny_unet_checkpoint(tmp_path_factory.mktemp("ck") / "m.pt", ["background", "fg"], in_chans=3)


@pytest.fixture
def scans(tmp_path) -> Path:
    return nifti_cases(tmp_path / "scans", ("a", "b"), (16, 16, 3))


def _refused(argv: list[str], capsys, *watched: Path, match: str) -> None:
    before = _digest(*watched)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and match in err, err
    assert _digest(*watched) == before


def _unwritable(tmp_path: Path) -> Path:
    """A place this process cannot write: a read-only folder, or /proc for root (who ignores modes)."""
    if os.geteuid() == 0:
        return Path("/proc/smaformer-test")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    return ro / "out"


def test_predict_refuses_its_input_as_output(scans, ckpt, capsys, tmp_path):
    case = scans / "a.nii.gz"
    _refused(["predict", "-i", str(case), "-o", str(case), "-c", str(ckpt)], capsys, scans, match="is the input")
    _refused(["predict", "-i", str(scans), "-o", str(scans), "-c", str(ckpt)], capsys, scans, match="is the input")
    link = tmp_path / "link"
    link.symlink_to(scans)
    _refused(["predict", "-i", str(scans), "-o", str(link / ".." / "link"), "-c", str(ckpt)], capsys, scans,
             match="is the input")
    # one file in, its folder out: the output name <folder>/a.nii.gz is the input case itself
    _refused(["predict", "-i", str(case), "-o", str(scans), "-c", str(ckpt)], capsys, scans,
             match="would write over an input case")
    _refused(["predict", "-i", str(scans), "-o", str(scans / "segs"), "-c", str(ckpt)], capsys, scans,
             match="is inside the input")


def test_predict_never_writes_over_a_checkpoint_or_its_sidecar(scans, ckpt, capsys, tmp_path):
    from smaformer.checkpoint import read_checkpoint, save_safetensors_pair

    weights, sidecar = save_safetensors_pair(read_checkpoint(ckpt), tmp_path / "model.safetensors")
    case = scans / "a.nii.gz"
    # the summary of -o model.nii.gz is model.json: the safetensors sidecar
    _refused(["predict", "-i", str(case), "-o", str(tmp_path / "model.nii.gz"), "-c", str(weights)], capsys,
             weights, sidecar, match="is the input")
    _refused(["predict", "-i", str(case), "-o", str(ckpt), "-c", str(ckpt)], capsys, ckpt, match="is the input")
    _refused(["predict", "-i", str(case), "-o", str(tmp_path / "seg.nii.gz"), "-c", str(ckpt), "--output-type",
              "dicom-seg"], capsys, scans, match="needs DICOM series folders")
    _refused(["predict", "-i", str(case), "-o", str(tmp_path / "seg.dcm"), "-c", str(ckpt)], capsys, scans,
             match="a DICOM SEG or RTSTRUCT is named *.dcm")


def test_predict_refuses_two_cases_with_one_output_name(scans, ckpt, capsys, tmp_path):
    img = nib.load(str(scans / "a.nii.gz"))
    nib.save(img, str(scans / "a.nii"))
    _refused(["predict", "-i", str(scans), "-o", str(tmp_path / "out"), "-c", str(ckpt)], capsys, scans,
             match="would both be written as a.*")
    assert not (tmp_path / "out").exists()


def test_unwritable_outputs_are_refused_before_any_model_is_loaded(scans, tmp_path, capsys):
    note = tmp_path / "notes.txt"
    note.write_text("mine")
    missing = str(tmp_path / "no-such-model.pt")     # never read: the output check comes first
    _refused(["predict", "-i", str(scans), "-o", str(note / "seg.nii.gz"), "-c", missing], capsys, scans, note,
             match="notes.txt is a file, not a folder")
    _refused(["predict", "-i", str(scans / "a.nii.gz"), "-o", str(_unwritable(tmp_path) / "seg.nii.gz"),
              "-c", missing], capsys, scans, match="cannot write in")
    _refused(["evaluate", "-c", missing, "-d", str(scans), "-o", str(note)], capsys, note,
             match="output is a file; give a folder")
    _refused(["export", "-f", "onnx", "-c", missing, "-o", str(note / "m.onnx")], capsys, note,
             match="is a file, not a folder")
    _refused(["convert", str(scans), "-o", str(note)], capsys, scans, note, match="output is a file")


def test_evaluate_convert_export_refuse_their_inputs(scans, ckpt, capsys, tmp_path):
    _refused(["evaluate", "-c", str(ckpt), "-d", str(scans), "-o", str(scans / "eval"), "--save-nifti"], capsys,
             scans, match="is inside the input")
    _refused(["convert", str(scans), "-o", str(scans)], capsys, scans, match="is the input")
    pair = ["--pair", str(scans / "a.nii.gz"), str(scans / "b.nii.gz")]
    _refused(["convert", *pair, "-o", str(scans / "a.nii.gz")], capsys, scans, match="is the input")
    _refused(["export", "-f", "torchscript", "-c", str(ckpt), "-o", str(ckpt)], capsys, ckpt, match="is the input")
    _refused(["evaluate", "--cross-validation", str(tmp_path), "-o", str(tmp_path / "cv")], capsys, scans,
             match="is inside the input")


def test_train_out_into_a_run_is_refused_and_its_checkpoint_kept(tmp_path, capsys):
    run = tmp_path / "old"
    run.mkdir()
    (run / "latest.pt").write_bytes(b"an earlier run's weights")
    _refused(["train", "--config", "acdc_swin_unet", "--out", str(run)], capsys, run, match="holds a run (latest.pt)")
    _refused(["train", "--config", "acdc_swin_unet", "--out", str(_unwritable(tmp_path))], capsys, run,
             match="cannot write in")


def test_parallel_fold_runs_get_their_own_folders(tmp_path):
    base = tmp_path / "acdc_swin_unet-fold0-20261204-120000"
    first, second = claim_run_dir(base), claim_run_dir(base)
    assert first == base and second.name == base.name + "-2" and second.is_dir()


def test_new_run_folder_names_its_fold(tmp_path):
    from smaformer.config import load_config
    from smaformer.train import distributed as dd
    from smaformer.train.rundir import new_run_dir

    cfg = load_config("acdc_swin_unet", [f"train.out_dir={tmp_path}"], base={"data": {"fold": 3}})
    path = new_run_dir(cfg, dd.Dist())
    assert path.parent == tmp_path and path.name.startswith("acdc_swin_unet-fold3-")
    assert not path.exists()     # claimed only when training starts (a dry run creates nothing)


def test_atomic_path_turns_oserror_into_one_line(tmp_path):
    note = tmp_path / "notes.txt"
    note.write_text("mine")
    with pytest.raises(InputError, match=r"notes.txt/seg.nii.gz: cannot write here \("):
        with atomic_path(note / "seg.nii.gz"):
            pass
    with pytest.raises(InputError, match="is the input"):
        check_output(tmp_path / "x" / ".." / "notes.txt", inputs=[note])


def test_a_killed_writer_leaves_no_partial_output_and_the_next_run_cleans_up(scans, ckpt, tmp_path):
    """SIGKILL in the middle of a write: the target is absent (never partial); the hidden temp file it left is
    removed by the next predict into that folder once it is older than a parallel writer could be."""
    out = tmp_path / "segs"
    code = ("import os, signal, sys\nfrom smaformer.io_utils import atomic_path\n"
            "with atomic_path(sys.argv[1]) as tmp:\n"
            "    tmp.write_bytes(b'half a label volume')\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(out / "a.nii.gz")], check=False)
    assert proc.returncode == -signal.SIGKILL
    leftovers = [p for p in out.iterdir()]
    assert not (out / "a.nii.gz").exists() and len(leftovers) == 1 and leftovers[0].name.startswith(".a.nii.gz.")
    assert clean_stale_temps(out) == []              # young: might be a parallel part still writing
    old = time.time() - STALE_TEMP_S - 1
    os.utime(leftovers[0], (old, old))
    assert main(["predict", "-i", str(scans), "-o", str(out), "-c", str(ckpt), "--quiet"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.nii.gz", "b.nii.gz", "predict.json"]
