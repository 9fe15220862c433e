"""Uploaded media: the supported types and their size limits, the in-memory store, the reading of an upload.

``MediaStore`` keeps what ``POST /{pnid}/media`` received (``StoredMedia``: id,
MIME type, bytes, SHA-256) until ``DELETE /{media-id}``, or until newer uploads
push it past the store's memory budget. ``_read_upload`` reads the multipart
body of an upload, refusing a file beyond the largest limit (131053) as it streams.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import NamedTuple

import aiohttp
from aiohttp import web

from .graph_errors import GraphError
from .state import SandboxState

__all__ = ["MEDIA_TYPES", "MediaStore", "StoredMedia"]


MEDIA_TYPES: Mapping[str, int] = {
    "audio/aac": 16 * 2**20,
    "audio/amr": 16 * 2**20,
    "audio/mpeg": 16 * 2**20,
    "audio/mp4": 16 * 2**20,
    "audio/ogg": 16 * 2**20,
    "image/jpeg": 5 * 2**20,
    "image/png": 5 * 2**20,
    "image/webp": 500 * 2**10,
    "video/mp4": 16 * 2**20,
    "video/3gpp": 16 * 2**20,
    "text/plain": 100 * 2**20,
    "application/pdf": 100 * 2**20,
    "application/msword": 100 * 2**20,
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": 100 * 2**20,
    "application/vnd.ms-excel": 100 * 2**20,
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": 100 * 2**20,
    "application/vnd.ms-powerpoint": 100 * 2**20,
    "application/vnd.openxmlformats-officedocument.presentationml.presentation": 100 * 2**20,
}
"""Supported upload MIME types -> their size limit in bytes (shared WhatsApp spec 1.4)."""
_UPLOAD_MAX = max(MEDIA_TYPES.values())


class StoredMedia(NamedTuple):
    """An uploaded media file."""

    id: str
    mime_type: str
    data: bytes
    sha256: str
    """Hex digest, as ``GET /{media-id}`` gives it."""


class MediaStore:
    """Uploaded media, in memory; the oldest are forgotten beyond ``max_bytes`` in total.

    :param max_bytes: the memory the store may hold.
    """

    def __init__(self, max_bytes: int = 256 * 2**20) -> None:
        self.max_bytes = max_bytes
        self._items: dict[str, StoredMedia] = {}
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, media_id: object) -> bool:
        return media_id in self._items

    def add(self, media_id: str, mime_type: str, data: bytes) -> StoredMedia:
        """Store ``data`` under ``media_id``."""
        self.delete(media_id)
        media = StoredMedia(media_id, mime_type, data, hashlib.sha256(data).hexdigest())
        self._items[media_id] = media
        self._bytes += len(data)
        while self._bytes > self.max_bytes and len(self._items) > 1:
            self.delete(next(iter(self._items)))
        return media

    def get(self, media_id: str) -> StoredMedia | None:
        return self._items.get(media_id)

    def delete(self, media_id: str) -> bool:
        """Forget a media; whether it was there."""
        media = self._items.pop(media_id, None)
        if media is None:
            return False
        self._bytes -= len(media.data)
        return True


def _new_media_id(state: SandboxState, media: MediaStore) -> str:
    while True:
        media_id = str(state.rng.randrange(10**15, 10**16))
        if media_id not in media:
            return media_id


async def _read_upload(request: web.Request) -> tuple[dict[str, str], bytes | None, str | None]:
    """The text fields and the ``file`` part (bytes, content type) of a multipart upload."""
    fields: dict[str, str] = {}
    data: bytes | None = None
    file_type: str | None = None
    if request.content_type == "application/x-www-form-urlencoded":
        form = await request.post()
        return {key: value for key, value in form.items() if isinstance(value, str)}, None, None
    if not request.content_type.startswith("multipart/"):
        return fields, None, None
    reader = await request.multipart()
    async for part in reader:
        if not isinstance(part, aiohttp.BodyPartReader) or part.name is None:
            continue
        if part.name == "file":
            chunks = bytearray()
            while chunk := await part.read_chunk():
                chunks += chunk
                if len(chunks) > _UPLOAD_MAX:
                    raise GraphError(
                        131053, details=f"Media file is larger than the maximum of {_UPLOAD_MAX} bytes"
                    )
            data = bytes(chunks)
            file_type = part.headers.get(aiohttp.hdrs.CONTENT_TYPE)
        else:
            fields[part.name] = await part.text()
    return fields, data, file_type
