"""The live preview: the issue as a reader will see it, at a phone's and a desktop's width, served
on 127.0.0.1 and re-rendered whenever the digest or a template changes.

Every request renders afresh (a render takes milliseconds), so what the page shows is always what
`newsletter render` would write. Thumbnails are served from the local assets folder, so the preview
works offline; the unsubscribe link is filled with a harmless page of the preview itself.
"""

from __future__ import annotations

import hashlib
import socket
from dataclasses import dataclass, replace
from datetime import date
from typing import Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from ..errors import ConfigError, NewsletterError, RenderError
from ..sections import Site
from .assets import asset_file
from .digest import load_digest
from .render import BUNDLED_TEMPLATES, GMAIL_CLIP_BYTES, RenderedIssue, render_issue, render_template

PREVIEW_TEMPLATE = "preview.html.j2"
PHONE_WIDTH = 375
DESKTOP_WIDTH = 640


@dataclass(frozen=True)
class Preview:
    """What the preview serves: the project's site, pointed at the preview's own address for
    thumbnails."""

    site: Site
    day: date | None  # None: always the latest digest
    origin: str  # http://127.0.0.1:<port>

    @classmethod
    def at(cls, site: Site, day: date | None, port: int) -> Preview:
        origin = f"http://127.0.0.1:{port}"
        return cls(replace(site, assets_url=f"{origin}/assets"), day, origin)

    @property
    def unsubscribe_url(self) -> str:
        return f"{self.origin}/unsubscribe-preview"

    @property
    def preferences_url(self) -> str:
        return f"{self.origin}/preferences-preview"

    def render(self) -> RenderedIssue:
        return render_issue(load_digest(self.site, self.day), self.site)

    def version(self) -> str:
        """Changes whenever a digest or a template file changes (or appears, or goes): the bundled
        templates' too, which a templates_dir of one's own falls back on."""
        templates = self.site.templates_dir.resolve()
        folders = [self.site.digests_dir, *dict.fromkeys([templates, BUNDLED_TEMPLATES])]
        signature = hashlib.sha256()
        for folder in folders:
            for path in sorted(folder.rglob("*")) if folder.is_dir() else []:
                if path.is_file():
                    stat = path.stat()
                    signature.update(f"{path}\0{stat.st_mtime_ns}\0{stat.st_size}\n".encode())
        return signature.hexdigest()[:16]


def preview_app(preview: Preview) -> Starlette:
    """The preview's web app: the page, the email (HTML and text), its thumbnails, a version to poll."""

    def page(request: Request) -> Response:
        try:
            issue = preview.render()
        except NewsletterError as error:
            # Shown in place of the email; the page keeps polling, so fixing the file reloads it.
            issue, problem = None, str(error)
        else:
            problem = None
        context = {
            "issue": issue,
            "problem": problem,
            "settings": preview.site,
            "version": preview.version(),
            "phone_width": PHONE_WIDTH,
            "desktop_width": DESKTOP_WIDTH,
            "clip_bytes": GMAIL_CLIP_BYTES,
        }
        try:
            html = render_template(preview.site, PREVIEW_TEMPLATE, context)
        except RenderError as error:
            # The preview page's own template is broken: nothing to show the problem in but text.
            return PlainTextResponse(str(error), status_code=500, headers={"Cache-Control": "no-store"})
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    def email(request: Request) -> Response:
        try:
            html, _ = preview.render().personalised(preview.unsubscribe_url, preview.preferences_url)
        except NewsletterError as error:
            return PlainTextResponse(str(error), status_code=500)
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    def email_text(request: Request) -> Response:
        try:
            _, text = preview.render().personalised(preview.unsubscribe_url, preview.preferences_url)
        except NewsletterError as error:
            return PlainTextResponse(str(error), status_code=500)
        return PlainTextResponse(text, headers={"Cache-Control": "no-store"})

    def version(request: Request) -> Response:
        return JSONResponse({"version": preview.version()}, headers={"Cache-Control": "no-store"})

    def asset(request: Request) -> Response:
        url = f"{preview.site.assets_url}/{request.path_params['name']}"
        path = asset_file(preview.site, url)
        if path is None:
            return PlainTextResponse("not found", status_code=404)
        return FileResponse(path)

    def personal_link(request: Request) -> Response:
        kind = request.url.path.strip("/").removesuffix("-preview")
        return PlainTextResponse(f"Preview: in a sent issue this link is the recipient's own {kind} link.\n")

    return Starlette(
        routes=[
            Route("/", page),
            Route("/email", email),
            Route("/email.txt", email_text),
            Route("/version", version),
            Route("/assets/{name}", asset),
            Route("/unsubscribe-preview", personal_link),
            Route("/preferences-preview", personal_link),
        ]
    )


def serve_preview(
    site: Site, day: date | None, *, port: int, ready: Callable[[str], None]
) -> None:
    """Serve the preview on 127.0.0.1:`port` until interrupted; `ready(url)` runs once it listens
    (the CLI opens the browser or prints the URL there)."""
    import uvicorn

    preview = Preview.at(site, day, port)
    # Fail with one clear message before serving: nothing to preview, or the port taken.
    load_digest(site, day)
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as error:
            raise ConfigError(f"--port {port}: cannot listen on 127.0.0.1:{port} ({error.strerror})") from None

    class Server(uvicorn.Server):
        async def startup(self, sockets=None) -> None:
            await super().startup(sockets)
            if self.started:
                ready(f"{preview.origin}/")

    config = uvicorn.Config(preview_app(preview), host="127.0.0.1", port=port, log_level="warning")
    Server(config).run()
