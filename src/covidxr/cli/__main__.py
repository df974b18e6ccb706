"""``python -m covidxr.cli``: the same as the ``covidxr`` command.
Must not do anything but call :func:`covidxr.cli.main`.
"""

import sys
import warnings

from . import main

if __name__ == "__main__":  # pragma: no cover
    warnings.simplefilter("default")
    sys.exit(main())
