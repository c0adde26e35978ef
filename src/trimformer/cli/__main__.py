"""``python -m trimformer.cli``: the command line (e.g. under ``torchrun``)."""

import sys

from trimformer.cli.main import main

sys.exit(main())
