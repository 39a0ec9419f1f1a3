"""``python -m schoolgate.cli``."""

import sys

from schoolgate.cli.main import main

sys.exit(main())
