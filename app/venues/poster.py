"""The printable poster of a venue: an A4 SVG with the venue's code, its name and what to do.

The QR comes from qrcode's SVG path factory (one path, sharp at any print size), error correction M
like every code of ours, nested in the page at 14 cm so a phone reads it from a metre away.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Final
from xml.sax.saxutils import escape, quoteattr

import qrcode
import qrcode.constants
from qrcode.image.svg import SvgPathImage

from app.venues.store import Venue

# Page and code in millimetres (A4 portrait).
_WIDTH: Final = 210
_HEIGHT: Final = 297
_CODE_MM: Final = 140
_CODE_TOP: Final = 78
_FONT: Final = "'Noto Sans CJK SC','Source Han Sans SC','PingFang SC','Microsoft YaHei',sans-serif"


def _code(token: str) -> str:
    """The QR as an <svg> placed on the page: qrcode's own viewBox and path, our position and size."""
    qr = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_M, box_size=10, border=4)
    qr.add_data(token)
    qr.make(fit=True)
    element = ET.fromstring(qr.make_image(image_factory=SvgPathImage).to_string(encoding="unicode"))
    path = next(e for e in element.iter() if e.tag.endswith("path"))
    x = (_WIDTH - _CODE_MM) / 2
    return (
        f'<svg x="{x:g}" y="{_CODE_TOP}" width="{_CODE_MM}" height="{_CODE_MM}" '
        f"viewBox={quoteattr(element.get('viewBox', ''))}>"
        '<rect width="100%" height="100%" fill="#ffffff"/>'
        f'<path d={quoteattr(path.get("d", ""))} fill="#000000"/></svg>'
    )


def _text(y: float, text: str, size: float, *, bold: bool = False, fill: str = "#111111") -> str:
    weight = ' font-weight="bold"' if bold else ""
    return (
        f'<text x="{_WIDTH / 2:g}" y="{y:g}" font-size="{size:g}" text-anchor="middle" fill="{fill}"{weight}>'
        f"{escape(text)}</text>"  # escaped: a venue name cannot inject markup
    )


def render_poster(venue: Venue, token: str) -> bytes:
    parts = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="{_WIDTH}mm" height="{_HEIGHT}mm" '
        f'viewBox="0 0 {_WIDTH} {_HEIGHT}" font-family="{_FONT}">',
        f"<title>{escape(f'场所码 Place code: {venue.name}')}</title>",
        f'<rect width="{_WIDTH}" height="{_HEIGHT}" fill="#ffffff"/>',
        f'<rect width="{_WIDTH}" height="40" fill="#1a7f37"/>',
        _text(22, "场所码", 16, bold=True, fill="#ffffff"),
        _text(33, "Place code", 8, fill="#ffffff"),
        _text(56, venue.name[:40], 11, bold=True),
        _text(68, venue.address[:60], 6),
        _code(token),
        _text(232, "进入前请扫码登记，出示健康码", 8, bold=True),
        _text(242, "Scan to check in and show your health code", 6),
        _text(280, f"{venue.id} · {venue.area_code}", 4),
        "</svg>",
    ]
    return "\n".join(parts).encode()
