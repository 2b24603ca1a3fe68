"""Where real datasets live on disk.

Real data is never bundled: it is read from a folder laid out like `shared/data` (gsm8k/,
math500/, aime/, samples/). `--data` on the command line wins, then $ECHOCHAMBER_DATA, then a
`shared/data` folder beside the checkout (where CI puts it).
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "ECHOCHAMBER_DATA"
_BESIDE_CHECKOUT = Path(__file__).resolve().parents[3] / "shared" / "data"


def data_dir(explicit: str | Path | None = None) -> Path | None:
    """The real-data folder, or None when none is configured or present."""
    for candidate in (explicit, os.environ.get(ENV_VAR), _BESIDE_CHECKOUT):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None
