"""Images sent to the server as OpenAI `image_url` parts: data URIs in, checked RGB images out.

The server works offline, so it never fetches a URL: an image must travel inside the request
as `data:image/png;base64,...` (also JPEG and WebP). Each one goes through the checks the
clean stage applies to training images (`minimind.data.images.normalize_image`: header sizes
before any pixel is decoded, full decode, upright, RGB with transparency on white), so the
encoder sees a request's image exactly as it saw the training images. Every failure is an
`ImageInputError` carrying the HTTP status and error code the client gets.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from minimind.data.images import ImageCheckConfig, ImageError, decode_image, normalize_image

if TYPE_CHECKING:
    from PIL import Image

MEDIA_TYPES = ("image/png", "image/jpeg", "image/jpg", "image/webp")
DEFAULT_MAX_IMAGE_BYTES = 8 << 20  # decoded bytes of one image
DEFAULT_MAX_IMAGES = 4  # per request
# data:[<media type>][;<parameter>]*;base64,<payload>
_DATA_URI = re.compile(r"data:(?P<type>[^;,]*)(?P<params>(?:;[^;,]*)*),(?P<payload>.*)",
                       re.S | re.I)


class ImageInputError(ValueError):
    """An image part the server refuses: `status` (400 or 413) and `code` go to the client."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass(frozen=True)
class ImageLimits:
    """What a request may send: images per request, bytes per image, pixel sizes."""

    max_images: int = DEFAULT_MAX_IMAGES
    max_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    checks: ImageCheckConfig = field(default_factory=ImageCheckConfig)

    def __post_init__(self) -> None:
        if self.max_images < 1 or self.max_bytes < 1:
            raise ValueError(f"max_images ({self.max_images}) and max_image_bytes "
                             f"({self.max_bytes}) must be positive")

    @property
    def max_base64_chars(self) -> int:
        """Room the images may take in a request body (base64: 4 characters per 3 bytes)."""
        return self.max_images * (4 * -(-self.max_bytes // 3) + len("data:image/webp;base64,"))


def data_uri_bytes(url: str, max_bytes: int) -> bytes:
    """The image bytes inside a base64 data URI; remote and malformed URLs are refused."""
    if url[:8].lower().startswith(("http://", "https://")):
        raise ImageInputError(400, "remote_image_not_supported",
                              "This server works offline and does not download images: send "
                              "the image inline as a base64 data URI "
                              "(data:image/png;base64,...) instead of a http(s) URL.")
    match = _DATA_URI.fullmatch(url)
    if match is None:
        raise ImageInputError(400, "invalid_image_url",
                              f"Unsupported image URL {url[:40]!r}: only base64 data URIs "
                              "(data:image/png;base64,...) are accepted.")
    media_type = match["type"].strip().lower()
    if media_type not in MEDIA_TYPES:
        raise ImageInputError(400, "invalid_image_url",
                              f"Unsupported image media type {media_type!r}; accepted: "
                              f"{', '.join(MEDIA_TYPES)}.")
    if "base64" not in (p.strip().lower() for p in match["params"].split(";")):
        raise ImageInputError(400, "invalid_image_url",
                              "The image data URI must be base64-encoded (data:<type>;base64,...).")
    payload = match["payload"]
    size = len(payload.rstrip("=")) * 3 // 4  # what valid base64 decodes to
    if size > max_bytes:  # refused before decoding
        raise _too_many_bytes(size, max_bytes)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as error:
        raise ImageInputError(400, "invalid_image",
                              f"The image data is not valid base64: {error}.") from None
    return data


def load_image(url: str, limits: ImageLimits) -> Image.Image:
    """The RGB image of one `image_url`, checked like the clean stage checks training images."""
    data = data_uri_bytes(url, limits.max_bytes)
    try:
        checks = limits.checks.model_copy(update={"max_bytes": limits.max_bytes})
        clean = normalize_image(data, checks)
    except ImageError as error:
        if error.reason == "image_undecodable":
            raise ImageInputError(400, "invalid_image",
                                  f"The image could not be decoded: {error.detail}.") from None
        raise ImageInputError(400, "invalid_image_size",
                              f"The image's size is not accepted: {error.detail}.") from None
    return decode_image(clean.png)


def _too_many_bytes(size: int, max_bytes: int) -> ImageInputError:
    return ImageInputError(413, "image_too_large",
                           f"The image is {size} bytes; this server accepts at most "
                           f"{max_bytes} bytes per image.")
