"""``python -m metasparse`` = the ``metasparse`` console script."""
import os
import sys

# ``python -m`` puts the working directory first on sys.path: a user's own ``episodes.py``
# (or ``metrics.py``, ...) there would shadow this package's modules.  Drop that entry
# unless it is where this package itself lives (running from a source checkout).
_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if sys.path and os.path.abspath(sys.path[0] or os.curdir) == os.path.abspath(os.curdir) != _parent:
    del sys.path[0]

from .cli import main  # noqa: E402

sys.exit(main())
