import sys

from safety_lab.cli import main

sys.exit(main())
