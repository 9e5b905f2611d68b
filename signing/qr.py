"""QR images of a token, PNG and SVG. Off the hot path: a render costs about a hundred signatures.

qrcode's own PNG factories need Pillow or pypng, neither a dependency of ours, so the PNG is written
here: a 1-bit greyscale image, a dozen lines over zlib.
"""

from __future__ import annotations

import io
import struct
import zlib
from typing import Final

import qrcode
import qrcode.constants
from qrcode.image.svg import SvgPathImage

BOX_SIZE: Final = 4  # pixels per module: a status token's code (version 14 or 15) is then 324 or 340 pixels wide
BORDER: Final = 4  # the quiet zone the QR specification asks for
PNG_MAGIC: Final = b"\x89PNG\r\n\x1a\n"


def _qr(token: str) -> qrcode.QRCode:
    qr = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_M, box_size=BOX_SIZE, border=BORDER)
    qr.add_data(token)
    qr.make(fit=True)
    return qr


def module_matrix(token: str) -> list[list[bool]]:
    """The code's modules including the quiet zone; True is dark."""
    return [[bool(m) for m in row] for row in _qr(token).get_matrix()]


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(matrix: list[list[bool]], box: int) -> bytes:
    size = len(matrix) * box
    raw = bytearray()
    for row in matrix:
        bits = "".join(("0" if dark else "1") * box for dark in row)  # 1 is white in greyscale
        bits += "1" * (-len(bits) % 8)
        line = b"\x00" + int(bits, 2).to_bytes(len(bits) // 8, "big")  # filter type 0, none
        raw += line * box
    header = struct.pack(">IIBBBBB", size, size, 1, 0, 0, 0, 0)  # bit depth 1, greyscale
    return PNG_MAGIC + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(bytes(raw), 9)) + _chunk(b"IEND", b"")


def render_png(token: str) -> bytes:
    return _png(module_matrix(token), BOX_SIZE)


def render_svg(token: str) -> bytes:
    """A single-path SVG (small, scales without blur) with an XML declaration."""
    image = _qr(token).make_image(image_factory=SvgPathImage)
    out = io.BytesIO()
    image.save(out)
    return out.getvalue()
