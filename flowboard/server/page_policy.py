"""What browsers are told about our responses: security headers and caching.

Pure: the Content-Security-Policy is computed once from the page's own ``index.html``, so the
inline bootstrap script (which opens the stream while the modules load) and any inline event
handler are allowed by their SHA-256 hashes, and nothing else inline is.
"""

from __future__ import annotations

import base64
import hashlib
import re

#: <script> elements without a src: their text is what the browser hashes.
_INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>(.*?)</script>", re.DOTALL | re.IGNORECASE)
#: on...="..." attributes (inline event handlers).
_INLINE_HANDLER = re.compile(r"""\son[a-z]+=(?:"([^"]*)"|'([^']*)')""", re.IGNORECASE)

#: The page must not be framed (clickjacking): frame-ancestors for CSP-aware browsers,
#: X-Frame-Options for the rest.
FRAME_OPTIONS = "DENY"

#: The page and its files can be cached, but must be revalidated (ETag / Last-Modified) on each
#: load, so a browser never keeps an old page after an upgrade.
PAGE_CACHE_CONTROL = "no-cache"

#: JSON answers are live data: never cached.
API_CACHE_CONTROL = "no-store"


def _sha256_source(text: str) -> str:
    digest = hashlib.sha256(text.encode()).digest()
    return f"'sha256-{base64.b64encode(digest).decode()}'"


def content_security_policy(index_html: str) -> str:
    """The CSP for the page and its files: only our own origin, inline code only by hash."""
    scripts = ["'self'"]
    scripts += [_sha256_source(match.group(1)) for match in _INLINE_SCRIPT.finditer(index_html)]
    handlers = [_sha256_source(m.group(1) or m.group(2) or "") for m in _INLINE_HANDLER.finditer(index_html)]
    if handlers:
        # Hashes apply to event-handler attributes only with 'unsafe-hashes' (CSP level 3).
        scripts += ["'unsafe-hashes'", *handlers]
    directives = [
        "default-src 'self'",
        f"script-src {' '.join(dict.fromkeys(scripts))}",
        "style-src 'self'",
        # The favicon is a data: URI.
        "img-src 'self' data:",
        # 'self' covers ws:/wss: to the page's own host (CSP level 3).
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
    return "; ".join(directives)
