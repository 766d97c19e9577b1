"""Credentials in tracking URIs: taken out before anything is printed, stored or shipped.

A user may write ``http://user:password@host:5000`` as ``tracking.uri``. MLflow reads
credentials from ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` as well, so the
driver moves them there (its trials inherit or are sent the variables) and keeps only the bare
URI in the spec, ``compsweep.json``, Tune's state, the ``spec.yaml`` artifact and every line it
prints. :func:`redact` masks any credential that still turns up in text.
"""

from __future__ import annotations

import os
import re
from urllib.parse import unquote, urlsplit, urlunsplit

USERNAME_VAR = "MLFLOW_TRACKING_USERNAME"
PASSWORD_VAR = "MLFLOW_TRACKING_PASSWORD"

_USERINFO = re.compile(
    r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^/@:\s]*):(?P<pw>[^/@\s]*)@"
)


def split_credentials(uri: str | None) -> tuple[str | None, str | None, str | None]:
    """``(uri without credentials, username, password)``; the last two are None when the URI
    carries none."""
    if not uri or "@" not in uri:
        return uri, None, None
    parts = urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri, None, None
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal keeps its brackets
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    bare = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    user = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    return bare, user, password


def move_credentials_to_env(uri: str | None) -> str | None:
    """Strip credentials from ``uri`` into ``MLFLOW_TRACKING_USERNAME`` / ``_PASSWORD`` of this
    process (and so of every process it starts); returns the bare URI."""
    bare, user, password = split_credentials(uri)
    if user:
        os.environ[USERNAME_VAR] = user
    if password is not None:
        os.environ[PASSWORD_VAR] = password
    return bare


def redact(text: str) -> str:
    """``text`` with the password of any ``scheme://user:password@`` replaced by ``***``."""
    return _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
