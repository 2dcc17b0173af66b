"""``python -m openood_diffood``."""
import sys

from .cli import main

sys.exit(main())
