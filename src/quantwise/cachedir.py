"""Where quantwise keeps what it computed once and reuses: ``$QUANTWISE_CACHE``, else ``~/.cache/quantwise``.

Everything in it can be deleted at any time; it is recomputed on the next run.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """The cache folder (or a sub-folder of it), created when absent."""
    d = Path(os.environ.get("QUANTWISE_CACHE", Path.home() / ".cache" / "quantwise")).joinpath(*parts)
    d.mkdir(parents=True, exist_ok=True)
    return d
