"""Images of the vision path: validation, RGB normalisation, content hashes and the clean store.

Raw image-text data carries images in every state: truncated downloads, HTML error pages saved
as `.jpg`, 1x1 tracking pixels, headers that claim a 100000x100000 canvas (a decompression
bomb), palette and alpha PNGs, greyscale, 16-bit and CMYK JPEGs, photos stored sideways with
an EXIF orientation tag. The encoders downstream want plain RGB pixels, so clean checks every
image once (`normalize_image`): size limits from `ImageCheckConfig` are checked on the byte
count and on the header before any pixel is decoded, then the file is verified and fully
decoded, turned upright, converted to RGB (transparency composited on white) and re-encoded
as PNG without metadata. A bad image raises `ImageError` with a snake_case reason
(`image_undecodable`, `image_too_small`, `image_too_large`, `image_missing`).

Because the stored PNG depends on the pixels only, its sha256 identifies the image: equal
pixels from differently encoded files get one hash, which is how clean deduplicates images
and what the feature cache is keyed by. `ImageStore` writes each unique image once to
`images-NNNNN.parquet` shards (`IMAGE_SCHEMA`), and `iter_clean_images` streams them back.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, model_validator

from minimind.data.records import SchemaError
from minimind.data.shards import UniqueRowStore, human_size, iter_rows, shard_paths

if TYPE_CHECKING:
    from PIL import Image

IMAGES_PREFIX = "images"
IMAGE_SCHEMA = pa.schema([("sha256", pa.string()), ("image", pa.binary()),
                          ("width", pa.int32()), ("height", pa.int32())])
# Formats Pillow may parse: the ones image datasets use (JPEG includes camera MPO files).
# Anything else (EPS, PSD, ICO, ...) is refused before a decoder for it runs.
ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
PNG_COMPRESS_LEVEL = 3  # zlib level: ~3x faster than the default 6 for a few % more bytes
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class ImageCheckConfig(BaseModel):
    """What clean accepts as an image (params.yaml `clean.images`)."""

    model_config = ConfigDict(extra="forbid")

    min_side: int = Field(16, ge=1, description="narrower or shorter images are rejected")
    max_side: int = Field(4096, ge=1, description="wider or taller images are rejected")
    max_pixels: int = Field(16_777_216, ge=1, description="width * height above this: rejected "
                            "before decoding (decompression bombs)")
    max_bytes: int = Field(20_000_000, ge=1, description="larger encoded files are rejected "
                           "unread")
    shard_rows: int = Field(2000, ge=1, description="images per data/clean/images shard")

    @model_validator(mode="after")
    def _check_sides(self) -> ImageCheckConfig:
        if self.min_side > self.max_side:
            raise ValueError(f"min_side {self.min_side} exceeds max_side {self.max_side}")
        return self


class ImageError(SchemaError):
    """An image that clean cannot accept; `reason` is one of the `image_*` codes."""


@dataclass(frozen=True)
class CleanImage:
    """A checked image: RGB pixels encoded as PNG, and the sha256 of those PNG bytes."""

    sha256: str
    png: bytes
    width: int
    height: int


def read_image_ref(ref: bytes | str, base_dir: Path, config: ImageCheckConfig) -> bytes:
    """The encoded bytes of an image given inline (bytes) or by a path relative to base_dir."""
    if isinstance(ref, bytes):
        return ref
    path = base_dir / ref  # an absolute ref stays absolute
    if not path.is_file():
        raise ImageError("image_missing", f"{ref}: no such file under {base_dir}")
    size = path.stat().st_size
    if size > config.max_bytes:
        raise ImageError("image_too_large", f"{ref}: {size} bytes > max_bytes {config.max_bytes}")
    return path.read_bytes()


def normalize_image(data: bytes, config: ImageCheckConfig | None = None) -> CleanImage:
    """Check encoded image bytes and return the image as RGB PNG with its hash.

    Raises ImageError: `image_too_large` (bytes, sides or pixels over the limits, checked
    before decoding), `image_too_small` (a side under min_side), `image_undecodable` (not an
    accepted image format, damaged or truncated data).
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    config = config or ImageCheckConfig()
    Image.init()  # registers every plugin, so `formats` below may name any of them
    if len(data) > config.max_bytes:
        raise ImageError("image_too_large",
                         f"{len(data)} bytes > max_bytes {config.max_bytes}")
    with warnings.catch_warnings():  # over-limit sizes are rejected below, never decoded
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS) as probe:
                check_size(probe.size, config)
                probe.verify()  # checksums and structure, without decoding pixels
            with Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS) as image:
                image.load()
                rgb = to_rgb(ImageOps.exif_transpose(image))
        except ImageError:
            raise
        except Image.DecompressionBombError as err:
            raise ImageError("image_too_large", str(err)) from None
        except UnidentifiedImageError:
            raise ImageError("image_undecodable", "not an image in an accepted format "
                                                  f"({', '.join(ACCEPTED_FORMATS)})") from None
        except Exception as err:  # Pillow raises many types (OSError, SyntaxError, ...) on junk
            raise ImageError("image_undecodable", f"{type(err).__name__}: {err}") from None
    png = encode_png(rgb)
    return CleanImage(hashlib.sha256(png).hexdigest(), png, rgb.width, rgb.height)


def check_size(size: tuple[int, int], config: ImageCheckConfig) -> None:
    """Raise ImageError when a (width, height) breaks the configured limits."""
    width, height = size
    if width * height > config.max_pixels:
        raise ImageError("image_too_large",
                         f"{width}x{height} = {width * height} pixels > max_pixels "
                         f"{config.max_pixels}")
    if max(width, height) > config.max_side:
        raise ImageError("image_too_large", f"{width}x{height}: a side > max_side "
                                            f"{config.max_side}")
    if min(width, height) < config.min_side:
        raise ImageError("image_too_small", f"{width}x{height}: a side < min_side "
                                            f"{config.min_side}")


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB: transparency composited on white, 16-bit greyscale scaled, others converted.

    A plain `convert("RGB")` drops alpha, which turns transparent pixels into whatever colour
    they happen to store (often black), and clips 16-bit values to white.
    """
    from PIL import Image

    if image.mode == "RGB":
        return image
    if image.mode in _SIXTEEN_BIT_MODES:
        return image.point(lambda value: value / 257).convert("L").convert("RGB")
    if image.has_transparency_data:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def encode_png(image: Image.Image) -> bytes:
    """PNG bytes that depend on the pixels only: no metadata (ICC, text, EXIF) is written."""
    info, image.info = image.info, {}
    try:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    finally:
        image.info = info
    return buffer.getvalue()


def decode_image(data: bytes) -> Image.Image:
    """A clean image's PNG bytes (or any readable image) as a loaded RGB PIL image."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return to_rgb(image)


def describe_bytes(data: bytes) -> str:
    """A short stand-in for bytes in reports: `<PNG 224x224, 3.1 kB, sha256 0123456789ab>`.

    Rejects files must stay readable text, so raw media never goes into them; the format and
    size come from the header only (nothing is decoded).
    """
    from PIL import Image

    digest = hashlib.sha256(data).hexdigest()[:12]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as image:
                kind = f"{image.format} {image.width}x{image.height}"
    except Exception:  # anything Pillow cannot identify
        kind = "not an image"
    return f"<{kind}, {human_size(len(data))}, sha256 {digest}>"


class ImageStore(UniqueRowStore):
    """The unique clean images of a corpus, each stored once in `images-NNNNN.parquet`."""

    def __init__(self, directory: Path, shard_rows: int) -> None:
        super().__init__(directory, IMAGES_PREFIX, IMAGE_SCHEMA, shard_rows)

    def add(self, image: CleanImage) -> bool:
        """Store the image unless its hash is already stored; True if it was new."""
        return self._add(image.sha256, {"image": image.png, "width": image.width,
                                        "height": image.height})


def iter_clean_images(images_dir: Path) -> Iterator[tuple[str, bytes]]:
    """(sha256, PNG bytes) of every image in a clean images directory, in stored order."""
    for row in iter_rows(shard_paths(images_dir, IMAGES_PREFIX), ["sha256", "image"],
                         batch_rows=64):
        yield row["sha256"], row["image"]
