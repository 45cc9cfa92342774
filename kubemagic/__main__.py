"""``python -m kubemagic`` — the same as the ``kubemagic`` command."""

import sys

from .cli import main

sys.exit(main())
