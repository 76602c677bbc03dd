"""What the capture keeps of a run's evidence, and what it never keeps: secrets.

Small and free of clients, so the mapping (pure) and the reading share it: keys and log text
that look like credentials are withheld, URLs lose their user and password.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

# Keys whose values are never kept or written (a conf's password, an env var's token...).
_SECRET_WORDS = (
    r"pass(word|wd)?|secret|token|credentials?|private_?key|api_?key|access_?key|secret_?key"
    r"|auth(orization)?|signature|session_?token"
)
SECRET_NAME = re.compile(rf"(^|[_\-.])({_SECRET_WORDS})([_\-.]|$)", re.I)
WITHHELD = "<withheld>"
# In log text: an env entry of a pod dump with a secret-looking name, a NAME=value or
# "name": value pair, a bearer token, a URL's user:password.
_QUOTED_OR_BARE = r"""('[^']*'|"[^"]*"|(?!None\b|True\b|False\b|null\b)[^\s'",}{\[(]+)"""
_SECRET_TEXT = (
    # A bearer or basic credential, and a URL's user:password (up to its last @).
    re.compile(r"(?P<keep>\b(Bearer|Basic) )[\w.~+/=-]+"),
    re.compile(r"(?P<keep>://)[^/\s?#]*@"),
    # An env entry of a pod dump or of JSON: {'name': 'DB_PASSWORD', 'value': '...'}.
    re.compile(
        rf"""(?P<keep>['"]name['"]:\s*['"][^'"]*({_SECRET_WORDS})[^'"]*['"],\s*['"]value['"]:\s*)"""
        r"""('[^']*'|"[^"]*")""",
        re.I,
    ),
    # NAME=value, NAME: value, 'name': 'value' (a name holding a secret word as a word).
    re.compile(
        rf"""(?P<keep>(?<![\w.])([\w\-]*[_\-])?({_SECRET_WORDS})([_\-][\w\-]*)?['"]?\s*[=:]\s*)"""
        + _QUOTED_OR_BARE,
        re.I,
    ),
    re.compile(r"(?P<keep>X-Amz-(Signature|Credential|Security-Token)=)[^&\s'\"]+", re.I),
)


def scrub(value: Any) -> Any:
    """``value`` with every secret-looking key's value, and secrets in text, withheld."""
    if isinstance(value, dict):
        named = str(value.get("name", "")) if set(value) >= {"name", "value"} else ""
        return {
            key: WITHHELD
            if SECRET_NAME.search(str(key)) or (key == "value" and SECRET_NAME.search(named))
            else scrub(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [scrub(item) for item in value]
    if isinstance(value, str):
        return scrub_text(value)
    return value


def scrub_text(text: str) -> str:
    """``text`` with what looks like a credential in it withheld."""
    for pattern in _SECRET_TEXT:
        text = pattern.sub(
            lambda m: m["keep"] + (WITHHELD + "@" if m["keep"] == "://" else WITHHELD), text
        )
    return text


def public_url(url: str) -> str:
    """``url`` without a user, a password, a query or a fragment in it."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = host if port is None else f"{host}:{port}"
    return urlunsplit(parts._replace(netloc=netloc, query="", fragment=""))


def pods_named(log: str | None) -> list[str]:
    """The pods a pod task's log says it made (the pod operator logs each one it builds)."""
    return re.findall(r"Building pod (\S+) with labels", log or "")
