"""``python -m smaformer`` (also the entry for ``torchrun -m smaformer train ...``)."""
import sys

from smaformer.cli import main

sys.exit(main())
