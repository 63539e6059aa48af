"""Which hosts a recipe may send a teacher API key to without the user saying so.

A recipe chooses both ``teacher.api_key_env`` (which environment variable is read) and
``teacher.base_url`` (where it is sent). A recipe from elsewhere could pair any variable
with its own server, so a key goes without confirmation only to a known provider's API or
to this machine; any other host must be named by the user, with ``--allow-key-host HOST``
or in ``$APPRENTICE_ALLOW_KEY_HOSTS`` (comma-separated). The recipe itself cannot vouch for
its host.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable
from urllib.parse import urlsplit

__all__ = ["ALLOW_ENV", "KNOWN_KEY_HOSTS", "allowed_key_hosts", "key_host_refusal"]

ALLOW_ENV = "APPRENTICE_ALLOW_KEY_HOSTS"

KNOWN_KEY_HOSTS = frozenset(
    {
        "api.openai.com",
        "api.anthropic.com",
        "generativelanguage.googleapis.com",
        "api.together.xyz",
        "api.groq.com",
        "api.mistral.ai",
        "openrouter.ai",
        "api.deepseek.com",
        "api.fireworks.ai",
    }
)


def allowed_key_hosts(extra: Iterable[str] = ()) -> frozenset[str]:
    """The hosts the user allowed: ``extra`` (the CLI flag) and ``$APPRENTICE_ALLOW_KEY_HOSTS``."""
    named = [*extra, *os.environ.get(ALLOW_ENV, "").split(",")]
    return frozenset(h.strip().lower().rstrip(".") for h in named if h.strip())


def _is_this_machine(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback  # 127.0.0.0/8 and ::1
    except ValueError:
        return False


def key_host_refusal(base_url: str, key_env: str, allowed: Iterable[str] = ()) -> str | None:
    """None if the key in ``key_env`` may go to ``base_url``, else the one-line reason and
    the way to allow it."""
    host = (urlsplit(base_url).hostname or "").rstrip(".")
    if not host:
        return f"teacher.base_url: {base_url!r} names no host; write it as https://HOST/v1"
    if host in KNOWN_KEY_HOSTS or _is_this_machine(host) or host in allowed_key_hosts(allowed):
        return None
    return (
        f"teacher.base_url: the recipe would send the API key in ${key_env} to {host!r}, which "
        "is neither a known provider's API nor this machine; if you trust that host, run again "
        f"with --allow-key-host {host} (or set {ALLOW_ENV}={host})"
    )
