"""numpy <-> message codec: packed little-endian matrices and per-class deltas, validated on decode.

Decoding never loops over elements: the bytes become a numpy view (`np.frombuffer`), checked as a
whole (length; values with `validate`). Every problem raises `InvalidMessage` naming the field and what was
expected, so the server can answer INVALID_ARGUMENT and change nothing.
"""

from __future__ import annotations

import numpy as np

from fedrecon.proto.payloads import Deltas
from fedrecon.proto.v1 import recon_pb2 as pb
from fedrecon.proto.validate import InvalidDeltas, shape_problem, validate


class _Dtypes(dict):
    """Wire dtype code -> numpy dtype; bfloat16 comes from ml_dtypes, imported on first use (~0.5 s of CPU)."""

    def _load(self) -> None:
        import ml_dtypes

        self[pb.BFLOAT16] = np.dtype(ml_dtypes.bfloat16)

    def __missing__(self, code: int) -> np.dtype:
        if code != pb.BFLOAT16:
            raise KeyError(code)
        self._load()
        return self[code]

    def __contains__(self, code: object) -> bool:
        return code == pb.BFLOAT16 or super().__contains__(code)

    def get(self, code: int, default: np.dtype | None = None) -> np.dtype | None:  # type: ignore[override]
        """Like dict.get, bfloat16 included."""
        return self[code] if code in self else default


DTYPES: dict[int, np.dtype] = _Dtypes({pb.FLOAT32: np.dtype("<f4"), pb.FLOAT16: np.dtype("<f2"),
                                       pb.FLOAT64: np.dtype("<f8")})
DTYPE_NAMES: dict[str, int] = {"float32": pb.FLOAT32, "float16": pb.FLOAT16, "bfloat16": pb.BFLOAT16,
                               "float64": pb.FLOAT64}  # the wire dtype names, once for every encoding


class InvalidMessage(InvalidDeltas):
    """A message that does not follow the wire contract; the text says which field and why."""


def dtype_code(name_or_code: str | int) -> int:
    """Wire dtype code from a name like 'float16' (or a code, checked)."""
    if isinstance(name_or_code, str):
        if name_or_code not in DTYPE_NAMES:
            raise InvalidMessage(f"dtype {name_or_code!r} is not one of {sorted(DTYPE_NAMES)}")
        return DTYPE_NAMES[name_or_code]
    if name_or_code not in DTYPES:
        raise InvalidMessage(f"dtype code {name_or_code} is not one of {sorted(DTYPES)}")
    return int(name_or_code)


def dtype_name(code: int) -> str:
    """'float32' etc. for a wire dtype code."""
    return {v: k for k, v in DTYPE_NAMES.items()}[dtype_code(code)]


def encode_matrix(array: np.ndarray, dtype: str | int = "float32") -> pb.Matrix:
    """Pack a 2-D array as `rows x dim` little-endian values of the given wire dtype."""
    return encode_matrix_into(pb.Matrix(), array, dtype)


def encode_matrix_into(target: pb.Matrix, array: np.ndarray, dtype: str | int = "float32") -> pb.Matrix:
    """Like `encode_matrix`, but fills `target` in place (e.g. a field of a reply: no copy of a large payload)."""
    code = dtype_code(dtype)
    array = np.asarray(array)
    if array.ndim != 2:
        raise InvalidMessage(f"matrix must be 2-D (rows x dim), got shape {array.shape}")
    with np.errstate(over="ignore"):
        packed = np.ascontiguousarray(array, dtype=DTYPES[code])
    if array.size and not np.isfinite(packed).all():  # checked in the wire dtype: no float64 temporary
        raise InvalidMessage(f"matrix has values that are not finite in {dtype_name(code)}")
    target.dtype, target.dim, target.rows, target.data = code, array.shape[1], array.shape[0], packed.tobytes()
    return target


def decode_matrix(message: pb.Matrix, field: str = "means") -> np.ndarray:
    """A read-only numpy view (rows x dim) of a packed matrix; checks dtype, dim and length (its values are
    checked with the deltas they belong to, `validate`)."""
    if message.dtype not in DTYPES:
        raise InvalidMessage(f"{field}.dtype {message.dtype} is not one of FLOAT32, FLOAT16, BFLOAT16, FLOAT64")
    dtype = DTYPES[message.dtype]
    if message.dim == 0 and message.rows:
        raise InvalidMessage(f"{field}.dim must be > 0")
    expected = message.rows * message.dim * dtype.itemsize
    if len(message.data) != expected:
        raise InvalidMessage(
            f"{field}.data has {len(message.data)} bytes; expected rows*dim*{dtype.itemsize} = {expected}"
        )
    return np.frombuffer(message.data, dtype=dtype).reshape(message.rows, message.dim)


def encode_deltas(deltas: Deltas, dtype: str | int = "float32") -> pb.ClassDeltas:
    """Build a ClassDeltas message from deltas (means in `dtype` on the wire)."""
    return encode_deltas_into(pb.ClassDeltas(), deltas, dtype)


def encode_deltas_into(target: pb.ClassDeltas, deltas: Deltas, dtype: str | int = "float32") -> pb.ClassDeltas:
    """Like `encode_deltas`, but fills `target` (e.g. `reply.classes`) in place: a large pull is not copied
    from a temporary message into the reply (each copy of megabytes costs milliseconds)."""
    deltas = Deltas(list(deltas.class_ids), np.asarray(deltas.counts, dtype=np.int64).reshape(-1),
                    np.asarray(deltas.means))
    if problem := shape_problem(deltas):
        raise InvalidMessage(problem)
    if len(deltas.counts) and deltas.counts.min() < 0:
        raise InvalidMessage("counts must be >= 0")
    class_ids, counts, means = deltas
    code = dtype_code(dtype)
    target.Clear()
    encode_matrix_into(target.means, means, code)  # validates the values before anything else is filled
    target.class_ids.extend(class_ids)
    target.counts.extend(counts.tolist())
    return target


def decode_deltas(message: pb.ClassDeltas, allow_zero_counts: bool = False, float64: bool = True,
                  wire_only: bool = False) -> Deltas:
    """Decode and validate deltas (`validate.validate`: matching lengths, counts in 1..MAX_COUNT, finite means,
    unique ids).

    `float64=False` keeps the means a read-only view in the wire dtype (no copy). `wire_only` (the
    server's pushes) checks only the wire format and leaves the rest to the store, which validates every
    caller's pushes (a count of 2**63 or more reads as negative there and is refused)."""
    means = decode_matrix(message.means)
    deltas = Deltas(list(message.class_ids), np.array(message.counts, dtype=np.uint64).astype(np.int64),
                    means.astype(np.float64) if float64 else means)
    if wire_only:
        return deltas
    return validate(deltas, zero_counts=allow_zero_counts, error=InvalidMessage)
