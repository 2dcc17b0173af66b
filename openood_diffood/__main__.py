"""``python -m openood_diffood``: see :mod:`openood_diffood.cli`."""
import sys

from .cli import main

sys.exit(main())
