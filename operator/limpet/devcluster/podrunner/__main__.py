"""Entry point: ``python -m limpet.devcluster.podrunner`` (see :mod:`.command`)."""

import sys

from limpet.devcluster.podrunner.command import main

sys.exit(main())
