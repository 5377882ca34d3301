"""Compressors for ReplayBuffer arrays, by name, for both zarr formats.

Diffusion Policy's stores are zarr v2 with numcodecs codecs (Blosc for low-dim data, imagecodecs'
Jpeg2k for images). zarr 3 reads and writes those v2 arrays, but v3 arrays need zarr's own
codec objects and cannot hold Jpeg2k at all, so the translation lives here, in one place.
"""

from __future__ import annotations

import numcodecs
import zarr
from imagecodecs.numcodecs import Jpeg2k, register_codecs

# Decoding Jpeg2k chunks of published datasets needs the imagecodecs ids in numcodecs' registry.
register_codecs()

_BLOSC_SHUFFLE = {
    numcodecs.Blosc.NOSHUFFLE: "noshuffle",
    numcodecs.Blosc.SHUFFLE: "shuffle",
    numcodecs.Blosc.BITSHUFFLE: "bitshuffle",
}

NAMED_COMPRESSORS = ("default", "disk", "image", "none")


def resolve_compressor(compressor="default"):
    """A numcodecs codec (or None) from a name or a codec.

    `default`: Blosc lz4, fast, for in-memory stores (Diffusion Policy's default).
    `disk`: Blosc zstd with bit-shuffle, smaller files (Diffusion Policy's choice for datasets).
    `image`: Jpeg2k at level 50, lossy, for uint8 image frames.
    """
    if compressor is None or compressor == "none":
        return None
    if compressor == "default":
        return numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.NOSHUFFLE)
    if compressor == "disk":
        return numcodecs.Blosc(cname="zstd", clevel=5, shuffle=numcodecs.Blosc.BITSHUFFLE)
    if compressor == "image":
        return Jpeg2k(level=50)
    if isinstance(compressor, str):
        raise ValueError(f"unknown compressor {compressor!r}; use one of {NAMED_COMPRESSORS} or a codec")  # noqa: TRY004
    return compressor


def compressors_for_format(compressor, zarr_format: int, key: str = "?"):
    """The `compressors=` argument of `create_array` for a codec and a zarr format."""
    codec = resolve_compressor(compressor)
    if codec is None:
        return None
    if zarr_format == 2:
        return codec
    if isinstance(codec, numcodecs.Blosc):
        return zarr.codecs.BloscCodec(
            cname=codec.cname, clevel=codec.clevel, shuffle=_BLOSC_SHUFFLE[codec.shuffle]
        )
    if isinstance(codec, zarr.abc.codec.BaseCodec):
        return codec
    raise ValueError(
        f"key {key!r}: codec {codec!r} cannot be stored in a zarr v3 array; "
        "write this store in the v2 format (zarr_format=2, the default)"
    )


def get_compressor(array):
    """The single compressor of a zarr array (None when uncompressed)."""
    compressors = getattr(array, "compressors", ())
    return compressors[0] if compressors else None
