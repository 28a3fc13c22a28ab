"""The dry run's provider: writes what the configured provider would send into a folder.

Each request goes to `batch-NNNN.<ext>` exactly as the provider would transmit it (SendGrid's JSON
body without the Authorization header; SMTP's message), and the first recipient's message to
`first-recipient.eml`, as that reader would receive it, with its HTML part beside it as
`first-recipient.html` to open in a browser.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from ..files import write_atomic
from .base import Answer, Batch, Provider, Verdict
from .mime import mime_message

EML_NAME = "first-recipient.eml"
HTML_NAME = "first-recipient.html"


class Outbox:
    """A Provider that sends nothing: `provider` prepares each batch, and the outbox keeps it."""

    def __init__(self, provider: Provider, folder: Path, clock: Callable[[], datetime]) -> None:
        self.provider = provider
        self.name = f"the outbox {folder} (for {provider.name})"
        self.batch_limit = provider.batch_limit
        self.folder = folder
        self._clock = clock
        folder.mkdir(parents=True, exist_ok=True)
        # A previous dry run of the same issue may have written more batches than this one will.
        for stale in [*folder.glob("batch-*"), folder / EML_NAME, folder / HTML_NAME]:
            stale.unlink(missing_ok=True)
        self.files: list[Path] = []
        self.eml: Path | None = None
        self.html: Path | None = None
        self._batches = 0

    def prepare(self, batch: Batch) -> tuple[Batch, Any]:
        return batch, self.provider.prepare(batch)

    def wire(self, prepared: tuple[Batch, Any]) -> list[tuple[str, bytes]]:
        return self.provider.wire(prepared[1])

    async def send(self, prepared: tuple[Batch, Any]) -> Answer:
        batch, request = prepared
        self._batches += 1
        number = self._batches
        pieces = self.provider.wire(request)
        for index, (extension, data) in enumerate(pieces, start=1):
            suffix = f"-{index}" if len(pieces) > 1 else ""
            path = self.folder / f"batch-{number:04d}{suffix}.{extension}"
            write_atomic(path, data)
            self.files.append(path)
        if self.eml is None and batch.recipients:
            mail = mime_message(batch.message, batch.recipients[0], self._clock())
            self.eml = self.folder / EML_NAME
            write_atomic(self.eml, mail.data)
            self.html = self.folder / HTML_NAME
            write_atomic(self.html, mail.html)
        return Answer(Verdict.ACCEPTED, message_id=f"dry-run-{number}")

    async def aclose(self) -> None:
        await self.provider.aclose()
