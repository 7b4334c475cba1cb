"""Fast, bounded reachability checks, so offline use fails in seconds instead of hanging.

Used before anything touches the Hugging Face Hub or torchvision's weight URLs.
"""

from __future__ import annotations

import socket
from urllib.parse import urlparse

DEFAULT_TIMEOUT_S = 3.0


def reachable(url: str, timeout: float = DEFAULT_TIMEOUT_S) -> tuple[bool, str]:
    """Try one TCP connection to ``url``'s host and port.

    Returns ``(True, "")`` or ``(False, reason)``; never raises and never waits longer than
    about ``timeout`` seconds per resolved address.
    """
    parsed = urlparse(url)
    host = parsed.hostname
    if not host:
        return False, f"{url!r} has no host name"
    port = parsed.port or (443 if parsed.scheme in ("https", "") else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True, ""
    except socket.gaierror as err:
        return False, f"cannot resolve {host} ({err.strerror or err})"
    except TimeoutError:
        return False, f"no answer from {host}:{port} within {timeout:g} s"
    except OSError as err:
        return False, f"cannot connect to {host}:{port} ({err.strerror or err})"
