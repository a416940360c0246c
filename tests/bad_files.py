"""Image files of every kind a real folder holds, made in memory: every Pillow mode, EXIF-rotated,
tiny and over-large, empty, truncated and garbage; with the exact reasons decoding gives."""
import io
import math
import struct
import warnings
import zlib

import numpy as np
from PIL import Image

from helpers import data, sample

EMPTY = "empty file (0 bytes)"
UNKNOWN = "not a readable image (unknown or corrupt format)"
CORRUPT = "corrupt or truncated: "
TOO_LARGE = "too large: "
ORIENTATION = 0x0112



def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _png_header(width: int, height: int) -> bytes:
    """A tiny, valid-looking PNG that claims ``width`` x ``height`` pixels (never allocated)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def over_limit_side() -> int:
    """A square side just over Pillow's limit, but under twice it (Pillow only warns)."""
    return math.isqrt(Image.MAX_IMAGE_PIXELS) + 1


def bomb_side() -> int:
    """A square side over twice Pillow's limit: ``Image.open`` itself refuses it."""
    return math.isqrt(3 * Image.MAX_IMAGE_PIXELS)


def real_jpeg() -> bytes:
    return sorted((sample.ensure_sample() / "n02123045").glob("*.JPEG"))[0].read_bytes()


def l_png() -> bytes:
    return encode(Image.new("L", (6, 4), 100), "PNG")


def la_png() -> bytes:
    image = Image.new("LA", (6, 4), (100, 255))
    image.putpixel((0, 0), (0, 0))  # fully transparent black
    return encode(image, "PNG")


def _palette_image() -> Image.Image:
    image = Image.new("P", (6, 4), 1)
    image.putpalette([255, 0, 0, 0, 255, 0] + [0, 0, 0] * 254)  # 0: red, 1: green
    image.putpixel((0, 0), 0)
    return image


def p_png() -> bytes:
    return encode(_palette_image(), "PNG")


def p_transparent_png() -> bytes:
    return encode(_palette_image(), "PNG", transparency=0)  # the red pixel is transparent


def rgba_png() -> bytes:
    image = Image.new("RGBA", (6, 4), (0, 0, 255, 255))  # opaque blue
    image.putpixel((0, 0), (255, 0, 0, 0))  # transparent red
    return encode(image, "PNG")


def cmyk_jpeg() -> bytes:
    return encode(Image.new("CMYK", (16, 8), (0, 255, 255, 0)), "JPEG", quality=95)  # red


def i16_png() -> bytes:
    gradient = np.tile(np.linspace(0, 65535, 16).astype(np.uint16), (4, 1))
    image = Image.fromarray(gradient)
    assert image.mode == "I;16"
    return encode(image, "PNG")


def exif_rotated_jpeg() -> bytes:
    """Stored 40 wide, 20 high, blue with a red top-left corner; Orientation 6 (rotate 90 CW)."""
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 8, 8))
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    return encode(image, "JPEG", exif=exif, quality=95)


def one_pixel_png() -> bytes:
    return encode(Image.new("RGB", (1, 1), (10, 20, 30)), "PNG")


def truncated_jpeg() -> bytes:
    whole = real_jpeg()
    return whole[: len(whole) // 2]


def garbage() -> bytes:
    return np.random.default_rng(7).integers(0, 256, 2000, dtype=np.uint8).tobytes()


def over_limit_png() -> bytes:
    return _png_header(over_limit_side(), over_limit_side())


def bomb_png() -> bytes:
    return _png_header(bomb_side(), bomb_side())


def decode_quietly(payload: bytes, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return data.decode_image(payload, **options)
