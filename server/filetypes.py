"""What a file is, judged by its first bytes (never by its name or the client's
Content-Type)."""

from __future__ import annotations

HEAD_BYTES = 12  # bytes needed to tell every type apart

# kind -> (MIME type, file extension)
TYPES: dict[str, tuple[str, str]] = {
    "jpeg": ("image/jpeg", "jpg"), "png": ("image/png", "png"), "gif": ("image/gif", "gif"),
    "webp": ("image/webp", "webp"), "mp4": ("video/mp4", "mp4"), "mp3": ("audio/mpeg", "mp3"),
    "pdf": ("application/pdf", "pdf"),
}


def sniff(head: bytes) -> str | None:
    """The kind of file whose content starts with ``head``, or None."""
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[4:8] == b"ftyp":
        return "mp4"
    if head[:3] == b"ID3" or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE6 in (0xE2, 0xE4, 0xE6)):
        return "mp3"
    if head[:5] == b"%PDF-":
        return "pdf"
    return None
