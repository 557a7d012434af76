"""``python -m metasparse`` = the ``metasparse`` console script."""
import sys

from .cli import main

sys.exit(main())
