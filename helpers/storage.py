"""Writing outputs so that a reader never sees half of one."""
from __future__ import annotations

import json
import os
from pathlib import Path


def write_json_atomically(path: Path, payload: dict) -> None:
    """Write JSON beside ``path`` and rename it into place in one step."""
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(staging, path)
