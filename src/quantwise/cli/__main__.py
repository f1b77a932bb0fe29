"""``python -m quantwise.cli``."""

import sys

from quantwise.cli import main

sys.exit(main())
