"""``python -m scalabl_pyro.cli``: the ``scalabl`` command."""

import sys

from scalabl_pyro.cli.app import main

sys.exit(main())
