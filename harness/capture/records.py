"""What the capture keeps of a run's evidence, and what it never keeps: secrets.

Small and free of clients, so the mapping (pure) and the reading share it: keys and log text
that look like credentials are withheld, URLs lose their user and password.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

# Keys whose values are never kept or written (a conf's password, an env var's token...).
SECRET_NAME = re.compile(
    r"pass(word|wd)?|secret|token|credential|private|auth|(^|_)(api_?|access_?)?keys?$", re.I
)
WITHHELD = "<withheld>"
# In log text: an env entry of a pod dump with a secret-looking name, a NAME=value or
# "name": value pair, a bearer token, a URL's user:password.
_SECRET_TEXT = (
    re.compile(
        r"(?P<keep>'name': '[^']*(PASS|SECRET|TOKEN|CREDENTIAL|PRIVATE|_KEY)[^']*',\s*'value': )"
        r"'[^']*'",
        re.I,
    ),
    re.compile(
        r"(?P<keep>(?<![.\w])\w*(password|passwd|secret|token|credential|api_?key|access_?key)"
        r"\w*['\"]?\s*[=:]\s*)(?!None\b|True\b|False\b|null\b)['\"]?[^\s'\",}{\[(]+['\"]?",
        re.I,
    ),
    re.compile(r"(?P<keep>Bearer )[\w.~+/=-]+"),
    re.compile(r"(?P<keep>://)[^/@\s:]+:[^/@\s]+@"),
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
    """``url`` without a user or password in it."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    return urlunsplit(parts._replace(netloc=host if parts.port is None else f"{host}:{parts.port}"))


def pods_named(log: str | None) -> list[str]:
    """The pods a pod task's log says it made (the pod operator logs each one it builds)."""
    return re.findall(r"Building pod (\S+) with labels", log or "")
