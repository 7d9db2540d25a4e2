"""Upload sizes as the UI states and enforces them: the API's limit (MAX_UPLOAD_BYTES) in Streamlit's units
(1 MB = 1024 × 1024 bytes), for `finetune ui` (``server.maxUploadSize``) and the pages' uploaders alike."""

from __future__ import annotations

MIB = 1024 * 1024


def upload_megabytes(limit: int) -> int:
    """The uploader's limit in whole MB (Streamlit's unit), never below the API's limit in bytes."""
    return max(1, -(-limit // MIB))


def size_text(size: int) -> str:
    """Bytes as people read them: 100 MB, 64 KB, 1.5 MB, 12 bytes, 1 byte."""
    for unit, scale in (("MB", MIB), ("KB", 1024)):
        if size >= scale:
            return f"{size // scale} {unit}" if size % scale == 0 else f"{size / scale:.1f} {unit}"
    return f"{size} byte{'' if size == 1 else 's'}"
