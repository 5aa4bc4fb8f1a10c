"""Reading image files: decode to RGB, refuse truncated JPEGs, and the size an image really has.

OpenCV decodes a truncated JPEG without an error: the missing rows come out grey and libjpeg prints an
unnamed "Premature end of JPEG file" on stderr. ``read_rgb_image`` walks the JPEG's marker segments
first (``jpeg_is_complete``) and refuses a file that ends before its end-of-image marker, naming it, so
training skips it and evaluation stops on it like on any unreadable file. ``image_size`` reads only the
header (Pillow), for the checks that need no pixels.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from assd.errors import UserError

_EXIF_ORIENTATION = 0x0112
_TRANSPOSED_ORIENTATIONS = (5, 6, 7, 8)  # rotated by 90/270 degrees: width and height swap


class UnreadableImage(UserError):
    """An image file that cannot be decoded, is truncated, or whose size contradicts its annotation."""


def _skip_entropy_coded_data(data: bytes, pos: int) -> int:
    """Index of the first marker after entropy-coded data starting at ``pos`` (-1: the data runs to the
    end). Inside it, 0xFF is followed by 0x00 (stuffing), a restart marker 0xD0-0xD7 or a fill 0xFF."""
    while True:
        pos = data.find(b"\xff", pos)
        if pos < 0 or pos + 1 >= len(data):
            return -1
        following = data[pos + 1]
        if following == 0x00 or 0xD0 <= following <= 0xD7:
            pos += 2
        elif following == 0xFF:
            pos += 1
        else:
            return pos


def jpeg_is_complete(data: bytes) -> bool:
    """Whether JPEG ``data`` (starting with the SOI marker) reaches its end-of-image marker (EOI) through
    a well-formed chain of marker segments (ITU T.81, B.1). Data after EOI is allowed."""
    pos, size = 2, len(data)
    while pos + 1 < size:
        if data[pos] != 0xFF:
            return False
        marker = data[pos + 1]
        if marker == 0xD9:  # EOI
            return True
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            pos += 2
            continue
        if pos + 4 > size:
            return False
        pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
        if marker == 0xDA:  # start of scan: entropy-coded data up to the next marker
            pos = _skip_entropy_coded_data(data, pos)
            if pos < 0:
                return False
    return False


def read_rgb_image(path: str | Path) -> np.ndarray:
    """RGB uint8 ``[H, W, 3]`` from ``path`` (EXIF orientation applied, as ``cv2.imread`` does);
    ``UnreadableImage`` naming the file when it is missing, cannot be decoded or is a truncated JPEG."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UnreadableImage(f"{path}: cannot read image file ({exc.strerror}): replace or remove it") from None
    if not data:
        raise UnreadableImage(f"{path}: empty file (0 bytes), not an image: replace or remove it")
    if data[:2] == b"\xff\xd8" and not jpeg_is_complete(data):
        raise UnreadableImage(f"{path}: corrupt image file: a truncated or malformed JPEG (no end-of-image "
                              "marker after its last scan): replace or remove it")
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as exc:  # e.g. absurd dimensions in the header
        raise UnreadableImage(f"{path}: cannot read image ({exc.msg.strip()}): replace or remove the file") from exc
    if image is None:
        raise UnreadableImage(f"{path}: missing, unreadable or corrupt image file: replace or remove it")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def image_size(path: str | Path) -> tuple[int, int] | None:
    """``(width, height)`` of the decoded image at ``path`` from its header only (EXIF rotation
    applied, as ``read_rgb_image`` does); None when the header cannot be read."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = image.getexif().get(_EXIF_ORIENTATION)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
        return None
    return (height, width) if orientation in _TRANSPOSED_ORIENTATIONS else (width, height)
