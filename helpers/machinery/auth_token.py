"""Ray's token file for token authentication: where Ray reads it, and one made for a new user."""
from __future__ import annotations

import os
import secrets
from pathlib import Path


def auth_token_path() -> Path:
    """Where Ray reads its token: ``RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token``."""
    return Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token").expanduser()


def ensure_auth_token() -> Path | None:
    """Make sure the token file exists, readable by its owner only (a new user has none), and
    return it; None where ``RAY_AUTH_TOKEN`` holds the token. The token is never printed."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return None
    path = auth_token_path()
    if not path.is_file() or path.stat().st_size == 0:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        scratch = path.with_name(f".{path.name}.{os.getpid()}")
        with os.fdopen(os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as file:
            file.write(secrets.token_hex(32))  # what Ray's own generator makes: 256 random bits
        os.chmod(scratch, 0o600)  # whatever the umask
        os.replace(scratch, path)
    elif path.stat().st_mode & 0o077 and path.stat().st_uid == os.getuid():  # another's: Ray reads it as it is
        os.chmod(path, 0o600)
    return path
