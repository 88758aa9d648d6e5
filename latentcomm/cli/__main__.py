"""``python -m latentcomm.cli``: the ``latentcomm`` command."""
import sys

from latentcomm.cli.main import main

sys.exit(main())
