"""``python -m dpvr ...`` is the ``dpvr`` command (used by ``accelerate launch -m dpvr train ...``)."""

import sys

from dpvr.cli import main

sys.exit(main())
