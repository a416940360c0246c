"""Decoding every kind of image file a real folder holds, or saying exactly why not (Pillow only: fast)."""
import numpy as np
import pytest
import torch
from PIL import Image

from bad_files import (CORRUPT, EMPTY, ORIENTATION, TOO_LARGE, UNKNOWN, bomb_png, bomb_side, cmyk_jpeg,
                       decode_quietly, encode, exif_rotated_jpeg, garbage, i16_png, l_png, la_png, one_pixel_png,
                       over_limit_png, over_limit_side, p_png, p_transparent_png, rgba_png, truncated_jpeg)
from helpers import data
from helpers.data import UnreadableImage



def _close(tensor, rgb, tolerance=3) -> bool:
    return bool((tensor.int() - torch.tensor(rgb)).abs().max() <= tolerance)


def test_grayscale_becomes_three_equal_channels():
    image = data.decode_image(l_png())
    assert image.shape == (3, 4, 6) and str(image.dtype) == "torch.uint8"
    assert (image == 100).all()


def test_grayscale_with_alpha_is_composited_over_white():
    image = data.decode_image(la_png())
    assert image[:, 0, 0].tolist() == [255, 255, 255]  # transparent
    assert image[:, 3, 5].tolist() == [100, 100, 100]  # opaque grey keeps its value


def test_palette_images_with_and_without_transparency():
    plain = data.decode_image(p_png())
    assert plain.shape == (3, 4, 6)
    assert plain[:, 0, 0].tolist() == [255, 0, 0] and plain[:, 1, 1].tolist() == [0, 255, 0]
    transparent = data.decode_image(p_transparent_png())
    assert transparent[:, 0, 0].tolist() == [255, 255, 255]  # the transparent index is white
    assert transparent[:, 1, 1].tolist() == [0, 255, 0]


def test_rgba_transparent_pixels_are_white_and_opaque_pixels_keep_their_colour():
    image = data.decode_image(rgba_png())
    assert image.shape == (3, 4, 6)
    assert image[:, 0, 0].tolist() == [255, 255, 255]
    assert (image[:, 1:, :] == torch.tensor([0, 0, 255], dtype=torch.uint8).view(3, 1, 1)).all()


def test_cmyk_jpeg_becomes_rgb_with_the_right_colour():
    image = data.decode_image(cmyk_jpeg())
    assert image.shape == (3, 8, 16)
    assert _close(image[:, 4, 8], [255, 0, 0], tolerance=4)


def test_16_bit_gradient_is_scaled_down_not_clipped_to_white():
    image = data.decode_image(i16_png())
    assert image.shape == (3, 4, 16)
    row = image[0, 0].tolist()
    assert row == sorted(row) and len(set(row)) == 16  # still a gradient
    assert row[0] == 0 and row[-1] == 255
    assert row == [v // 257 for v in np.linspace(0, 65535, 16).astype(np.uint16).tolist()]
    assert (image[0] == image[1]).all() and (image[1] == image[2]).all()


def test_exif_orientation_is_applied():
    image = data.decode_image(exif_rotated_jpeg())
    assert tuple(image.shape) == (3, 40, 20)  # H=40, W=20 once rotated 90 degrees clockwise
    red, blue = [255, 0, 0], [0, 0, 255]
    assert _close(image[:, 2, 17], red, 6)  # the stored top-left corner is now top-right
    assert _close(image[:, 2, 2], blue, 6)
    assert _close(image[:, 37, 2], blue, 6) and _close(image[:, 37, 17], blue, 6)


def test_exif_orientation_is_applied_to_reduced_scale_decoding():
    image = Image.new("RGB", (800, 400), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 100, 100))
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    decoded = data.decode_image(encode(image, "JPEG", exif=exif, quality=95), at_least=100)
    _, height, width = decoded.shape
    assert height == 2 * width and 100 <= width < 400  # reduced, never below at_least
    assert _close(decoded[:, 5, width - 5], [255, 0, 0], 8) and _close(decoded[:, 5, 5], [0, 0, 255], 8)


def test_one_pixel_image():
    image = data.decode_image(one_pixel_png())
    assert image.shape == (3, 1, 1) and image[:, 0, 0].tolist() == [10, 20, 30]
    assert data.decode_image(one_pixel_png(), at_least=256).shape == (3, 1, 1)


def test_image_over_the_pixel_limit_is_refused(monkeypatch):
    monkeypatch.setattr(data, "MAX_IMAGE_PIXELS", 1000)
    payload = encode(Image.new("RGB", (50, 40)), "PNG")
    with pytest.raises(UnreadableImage) as raised:
        data.decode_image(payload)
    assert str(raised.value) == (
        "too large: 50x40 pixels is over Pillow's decompression-bomb limit of 1000 pixels"
    )


def test_header_over_pillows_limit_is_refused():
    side = over_limit_side()
    with pytest.raises(UnreadableImage) as raised:
        decode_quietly(over_limit_png())
    assert str(raised.value) == (
        f"too large: {side}x{side} pixels is over Pillow's decompression-bomb limit of "
        f"{Image.MAX_IMAGE_PIXELS} pixels"
    )


def test_header_over_twice_pillows_limit_is_refused_not_raised_as_a_bomb_error():
    """Pillow's own DecompressionBombError must become an UnreadableImage too."""
    with pytest.raises(UnreadableImage, match=r"^too large: ") as raised:
        decode_quietly(bomb_png())
    assert f"{bomb_side() ** 2} pixels" in str(raised.value)


@pytest.mark.parametrize("make, reason", [
    (lambda: b"", EMPTY),
    (garbage, UNKNOWN),
    (lambda: b"just some notes, saved as a .jpg\n", UNKNOWN),
], ids=["empty", "garbage", "text"])
def test_unreadable_files_raise_with_their_exact_reason(make, reason):
    with pytest.raises(UnreadableImage) as raised:
        data.decode_image(make())
    assert str(raised.value) == reason


@pytest.mark.parametrize("at_least", [None, 224])
def test_truncated_jpeg_is_reported_as_truncated(at_least):
    with pytest.raises(UnreadableImage) as raised:
        data.decode_image(truncated_jpeg(), at_least=at_least)
    reason = str(raised.value)
    assert reason.startswith(CORRUPT) and "truncated" in reason and "\n" not in reason


READABLE_KINDS = {
    "L": (l_png, (4, 6)), "LA": (la_png, (4, 6)), "P": (p_png, (4, 6)),
    "P-transparent": (p_transparent_png, (4, 6)), "RGBA": (rgba_png, (4, 6)),
    "CMYK": (cmyk_jpeg, (8, 16)), "I;16": (i16_png, (4, 16)),
    "EXIF-6": (exif_rotated_jpeg, (40, 20)), "1x1": (one_pixel_png, (1, 1)),
}
UNREADABLE_KINDS = {
    "empty": (lambda: b"", EMPTY), "truncated": (truncated_jpeg, CORRUPT),
    "garbage": (garbage, UNKNOWN), "over-limit": (over_limit_png, TOO_LARGE),
    "bomb": (bomb_png, TOO_LARGE),
}


@pytest.mark.parametrize("kind", READABLE_KINDS)
def test_every_readable_kind_decodes_to_rgb_at_its_size(kind):
    make, (height, width) = READABLE_KINDS[kind]
    image = data.decode_image(make())
    assert tuple(image.shape) == (3, height, width) and image.dtype == torch.uint8


@pytest.mark.parametrize("kind", UNREADABLE_KINDS)
def test_every_unreadable_kind_is_refused_with_its_reason(kind):
    make, prefix = UNREADABLE_KINDS[kind]
    with pytest.raises(UnreadableImage) as raised:
        decode_quietly(make())
    assert str(raised.value).startswith(prefix) and (prefix != EMPTY or str(raised.value) == EMPTY)
