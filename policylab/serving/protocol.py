"""The wire format of remote inference: a JSON header and raw numpy bytes, never pickle.

One binary WebSocket message:

    b"PLB1" | header length (uint32, little-endian) | header (UTF-8 JSON) | payload

The header is `{"type": ..., "arrays": [{"key", "dtype", "shape", "offset", "nbytes"}], ...}`;
each array is `payload[offset:offset + nbytes]`, C order, little-endian, one of `DTYPES`.
Decoding checks every field and raises `ProtocolError`, which the server answers with an
`{"type": "error"}` message instead of dying.

Messages: "schema" -> {"shape_meta", "n_obs_steps", "n_action_steps"}; "predict" with obs
arrays `(B, To, ...)` -> "result" with `action (B, Ta, Da)` and `action_pred (B, T, Da)`;
"ping" -> "pong"; any failure -> "error" with a "message".
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping

import numpy as np

from policylab.common.shape_meta import ShapeMeta

MAGIC = b"PLB1"
DTYPES = ("float16", "float32", "float64", "uint8", "int32", "int64", "bool")
MAX_NDIM = 8
_PREFIX = struct.Struct("<4sI")


class ProtocolError(ValueError):
    """A message that does not follow the wire format."""


def encode(header: Mapping, arrays: Mapping[str, np.ndarray] | None = None) -> bytes:
    """Pack a header dict and named arrays into one message."""
    specs, chunks, offset = [], [], 0
    for key, value in (arrays or {}).items():
        arr = np.ascontiguousarray(value)
        if arr.dtype.name not in DTYPES:
            raise ProtocolError(f"array {key!r}: dtype {arr.dtype} not in {DTYPES}")
        data = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        specs.append({"key": key, "dtype": arr.dtype.name, "shape": list(arr.shape), "offset": offset,
                      "nbytes": len(data)})
        chunks.append(data)
        offset += len(data)
    head = json.dumps({**header, "arrays": specs}).encode()
    return _PREFIX.pack(MAGIC, len(head)) + head + b"".join(chunks)


def decode(message) -> tuple[dict, dict[str, np.ndarray]]:
    """One message -> (header, {key: array}); raises ProtocolError on anything malformed."""
    if not isinstance(message, (bytes, bytearray, memoryview)):
        raise ProtocolError("expected a binary message")
    message = bytes(message)
    if len(message) < _PREFIX.size:
        raise ProtocolError(f"message of {len(message)} bytes is shorter than the {_PREFIX.size}-byte prefix")
    magic, head_len = _PREFIX.unpack_from(message)
    if magic != MAGIC:
        raise ProtocolError(f"bad magic {magic!r}, expected {MAGIC!r}")
    body_start = _PREFIX.size + head_len
    if body_start > len(message):
        raise ProtocolError(f"header length {head_len} runs past the end of a {len(message)}-byte message")
    try:
        header = json.loads(message[_PREFIX.size:body_start].decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ProtocolError(f"header is not UTF-8 JSON: {err}") from None
    if not isinstance(header, dict) or not isinstance(header.get("type"), str):
        raise ProtocolError("header must be a JSON object with a string 'type'")
    specs = header.get("arrays", [])
    if not isinstance(specs, list):
        raise ProtocolError("'arrays' must be a list")
    payload = memoryview(message)[body_start:]
    return header, {spec.get("key") if isinstance(spec, dict) else None: _array(spec, payload) for spec in specs}


def _array(spec, payload: memoryview) -> np.ndarray:
    if not isinstance(spec, dict) or not isinstance(spec.get("key"), str):
        raise ProtocolError(f"array spec {spec!r} needs a string 'key'")
    key, dtype, shape = spec["key"], spec.get("dtype"), spec.get("shape")
    offset, nbytes = spec.get("offset"), spec.get("nbytes")
    if dtype not in DTYPES:
        raise ProtocolError(f"array {key!r}: dtype {dtype!r} not in {DTYPES}")
    if not isinstance(shape, list) or len(shape) > MAX_NDIM or \
            not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
        raise ProtocolError(f"array {key!r}: shape must be a list of <= {MAX_NDIM} non-negative ints, got {shape!r}")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (offset, nbytes)):
        raise ProtocolError(f"array {key!r}: offset and nbytes must be non-negative ints")
    itemsize = np.dtype(dtype).itemsize
    if math.prod(shape) * itemsize != nbytes:
        raise ProtocolError(f"array {key!r}: {nbytes} bytes do not hold a {shape} {dtype} array")
    if offset + nbytes > len(payload):
        raise ProtocolError(f"array {key!r}: bytes [{offset}, {offset + nbytes}) past the {len(payload)}-byte payload")
    return np.frombuffer(payload[offset:offset + nbytes], dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape)


def check_obs(obs: Mapping[str, np.ndarray], shape_meta: ShapeMeta | Mapping, n_obs_steps: int) -> None:
    """Raise ProtocolError unless obs is `{key: (B, To, *shape)}` (`ShapeMeta.check_obs`, the policies'
    rule), floating point, finite, and not empty."""
    meta = ShapeMeta.parse(shape_meta)
    try:
        batch = meta.check_obs(obs, n_obs_steps)
    except (KeyError, ValueError) as err:
        raise ProtocolError(err.args[0]) from None
    for key in meta.obs:
        arr = obs[key]
        if arr.dtype.kind != "f":
            raise ProtocolError(f"obs[{key!r}] must be floating point, got {arr.dtype}")
        if not np.all(np.isfinite(arr)):
            raise ProtocolError(f"obs[{key!r}] holds NaN or inf")
    if batch == 0:
        raise ProtocolError("empty batch")
