"""Picks the hot-path implementation: the Cython extension, or its pure-Python twin.

XQ_PURE=1 selects the twin explicitly (the tests run both); a missing extension falls back to it with
one warning in the log.
"""

from __future__ import annotations

import logging
import os

if os.environ.get("XQ_PURE") == "1":
    from . import _pyfast as fast
else:
    try:
        from . import _fast as fast
    except ImportError:
        from . import _pyfast as fast

        logging.getLogger("xq").warning("xq._fast extension not built; running the slow pure-Python path")

IMPLEMENTATION = fast.IMPLEMENTATION
__all__ = ["fast", "IMPLEMENTATION"]
