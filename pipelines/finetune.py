"""MLproject entry point `finetune`: parse parameters, call the library (as `python -m safety_lab finetune`)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project, also when not pip-installed

from safety_lab.cli import main  # noqa: E402

sys.exit(main(["finetune", *sys.argv[1:]]))
