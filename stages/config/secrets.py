"""Credentials never reach disk: the one redaction every config dump goes through.

A config tree may carry secrets: `data.storage_options` / `corpus.storage_options` hold fsspec's
`key`, `secret`, `token`, `client_kwargs.aws_secret_access_key`, ... Every file the project writes
from a config (the export's sam2videox.json, checkpoints' state.json, resume log lines) holds
`redact(tree)` instead: each value under a key named like a credential becomes REDACTED, and a
password in a URL's user part (`https://user:pw@host`) is masked. Everything else (endpoint_url,
region, anon, the config's own keys) is kept, so a dump still says which store a run read.

A resumed run compares the redacted forms (stages/distill/checkpoint/resume.py is given them), so a
secret rotated between runs is no config change, and the run takes its credentials from the command
line or the environment, never from a checkpoint.
"""

from __future__ import annotations

import re
from typing import Any

REDACTED = "<redacted>"

# a key is a credential when one of its "_"/"-"-separated words is one of these (aws_secret_access_key,
# session_token, key, password, ...); "holdout_keys" or "teacher_column" are not
_WORDS = {"key", "secret", "token", "password", "passwd", "credential", "credentials", "apikey", "auth", "authorization", "sas"}
# whole names that are credentials without a credential word
_NAMES = {"pw", "pwd", "account_key", "connection_string", "private_key_id"}
_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^/@:\s]+:)[^/@\s]+(?=@)", re.IGNORECASE)


def is_secret_key(name: str) -> bool:
    """True for a mapping key whose value is a credential (by its name)."""
    low = str(name).lower()
    return low in _NAMES or any(word in _WORDS for word in re.split(r"[_\-.]", low))


def redact(tree: Any) -> Any:
    """A copy of `tree` (dicts, lists, scalars) with every credential-named key's value REDACTED and URL
    passwords masked. Empty or None credentials stay as they are (nothing to hide, and a dump then says
    that none was given)."""
    if isinstance(tree, dict):
        return {k: (REDACTED if is_secret_key(k) and v not in (None, "", {}) else redact(v)) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(redact(v) for v in tree)
    if isinstance(tree, str):
        return _URL_PASSWORD.sub(rf"\g<head>{REDACTED}", tree)
    return tree
