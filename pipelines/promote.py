"""MLproject entry point `promote`: parse parameters, call the library (same code as `python -m safety_lab promote`)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project, also when not pip-installed

from safety_lab.cli import main  # noqa: E402

sys.exit(main(["promote", *sys.argv[1:]]))
