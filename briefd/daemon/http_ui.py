"""The example web page at ``/ui/`` (``BRIEFD_UI=true``): one static file, served as is.

The page is ``examples/web/index.html`` (packaged as ``briefd/ui/index.html``,
a link to that folder). It holds no secret: the API token is typed into it by
its user, kept in the page's memory and sent only as ``Authorization`` to this
daemon, never embedded in what is served here. So ``/ui/`` needs no token, as
``/healthz`` does not; the ``Host`` and ``Origin`` walls still apply
(:class:`~briefd.daemon.http_origin.FrontDoor`).

Since the token lives in the page, script injection is what would steal it.
The page writes server text with ``textContent`` only, and the daemon serves
it under a Content-Security-Policy that lets nothing run but the page's own
inline script and style, pinned by their SHA-256 (computed here when the file
is read), and lets it connect to this origin only. The file is read once, when
the API is built: a missing page stops the start.
"""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from briefd.config import ConfigError

PAGE = Path(__file__).resolve().parent.parent / "ui" / "index.html"
_INLINE = re.compile(r"<(script|style)>(.*?)</\1>", re.S)


def csp_of(html: str) -> str:
    """A Content-Security-Policy admitting ``html``'s own inline scripts and styles only."""
    hashes: dict[str, list[str]] = {"script": [], "style": []}
    for kind, body in _INLINE.findall(html):  # <script> without attributes: executable ones
        digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
        hashes[kind].append(f"'sha256-{digest}'")
    scripts = " ".join(hashes["script"]) or "'none'"
    styles = " ".join(hashes["style"]) or "'none'"
    return "; ".join(
        [
            "default-src 'none'",
            f"script-src {scripts}",
            f"style-src {styles}",
            "connect-src 'self'",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )


def ui_app(page: Path = PAGE) -> ASGIApp:
    """An ASGI app for ``/ui`` (redirected) and ``/ui/`` (the page); anything else 404."""
    try:
        html = page.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"BRIEFD_UI: the page {page} cannot be read: {err.strerror}") from None
    headers = {
        "Content-Security-Policy": csp_of(html),
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
    }
    body = html.encode()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        path, method = scope["path"], scope["method"]
        response: Response
        if path not in ("/ui", "/ui/", "/ui/index.html"):
            response = _error(404, "not_found", f"no route for {path[:100]}")
        elif method not in ("GET", "HEAD"):
            response = _error(405, "method_not_allowed", f"{method} {path}: GET only")
        elif path == "/ui":
            response = RedirectResponse("/ui/", status_code=308)
        else:
            response = Response(body, media_type="text/html; charset=utf-8", headers=headers)
        await response(scope, receive, send)

    return app


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)
