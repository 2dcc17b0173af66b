"""``python -m openood.main``: the start-up hook (:mod:`.hook`) provides this file as ``openood.main`` where
OpenOOD has none of its own; see :mod:`openood_diffood.openood.launcher`."""
import sys

from openood_diffood.openood.launcher import main

if __name__ == "__main__":
    sys.exit(main())
