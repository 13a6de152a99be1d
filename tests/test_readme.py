"""The README tour: every file it writes lands under runs/ (git-ignored), so a new clone stays clean."""
import re
import shlex
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
OUTPUT_FLAGS = {"-o", "--out", "--output", "--html"}


def _tour_commands() -> list[list[str]]:
    text = README.read_text(encoding="utf-8")
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    cmds = []
    for block in blocks:
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            line = line.split("#", 1)[0].strip()
            if line.startswith(("smaformer ", "torchrun ")):
                cmds.append(shlex.split(line))
    return cmds


def test_tour_writes_only_under_runs():
    cmds = _tour_commands()
    assert len(cmds) >= 10
    outputs = [c[i + 1] for c in cmds for i, a in enumerate(c[:-1]) if a in OUTPUT_FLAGS]
    assert outputs and all(o.startswith("runs/") for o in outputs), outputs
    assert len(set(o for o in outputs if o.endswith(".nii.gz"))) == len([o for o in outputs if o.endswith(".nii.gz")])
    assert "runs/" in (Path(__file__).resolve().parents[1] / ".gitignore").read_text(encoding="utf-8")
