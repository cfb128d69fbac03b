"""The wire codec: packed matrices round-trip in every dtype; malformed messages are refused precisely."""

import numpy as np
import pytest

from fedrecon.proto import codec
from fedrecon.proto.payloads import Deltas
from fedrecon.proto.v1 import recon_pb2 as pb


@pytest.mark.parametrize("dtype,tol", [("float64", 0), ("float32", 1e-7), ("float16", 1e-3), ("bfloat16", 1e-2)])
def test_round_trip_every_dtype(dtype: str, tol: float) -> None:
    means = np.random.default_rng(0).normal(size=(5, 64))
    message = codec.encode_deltas(Deltas([f"c{i}" for i in range(5)], [1, 2, 3, 4, 5], means), dtype)
    itemsize = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2}[dtype]
    assert len(message.means.data) == 5 * 64 * itemsize
    decoded = codec.decode_deltas(pb.ClassDeltas.FromString(message.SerializeToString()))
    assert decoded.class_ids == [f"c{i}" for i in range(5)]
    assert decoded.counts.tolist() == [1, 2, 3, 4, 5]
    np.testing.assert_allclose(decoded.means, means, rtol=tol, atol=tol * 4)


def test_bytes_are_little_endian_row_major() -> None:
    message = codec.encode_matrix(np.array([[1.0, 2.0]]), "float32")
    assert message.data == np.array([1.0, 2.0], dtype="<f4").tobytes()
    assert (message.rows, message.dim) == (1, 2)


def _deltas(**changes):
    message = codec.encode_deltas(Deltas(["a", "b"], [1, 2], np.zeros((2, 4))))
    for key, value in changes.items():
        target, _, field = key.partition("__")
        setattr(message.means if field else message, field or target, value)
    return message


@pytest.mark.parametrize(
    "message,expected",
    [
        (_deltas(means__data=b"\x00" * 7), "bytes"),
        (_deltas(means__dtype=0), "dtype"),
        (_deltas(means__dtype=9), "dtype"),
        (_deltas(means__dim=3), "bytes"),
        (pb.ClassDeltas(class_ids=["a", "a"], counts=[1, 1], means=codec.encode_matrix(np.zeros((2, 2)))),
         "more than once"),
        (pb.ClassDeltas(class_ids=["a"], counts=[0], means=codec.encode_matrix(np.zeros((1, 2)))), "is 0"),
        (pb.ClassDeltas(class_ids=["a"], counts=[2**62], means=codec.encode_matrix(np.zeros((1, 2)))), "<="),
        (pb.ClassDeltas(class_ids=["a", "b"], counts=[1], means=codec.encode_matrix(np.zeros((2, 2)))), "length"),
    ],
)
def test_malformed_deltas_are_refused(message: pb.ClassDeltas, expected: str) -> None:
    with pytest.raises(codec.InvalidMessage, match=expected):
        codec.decode_deltas(message)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_refused(bad: float) -> None:
    matrix = pb.Matrix(dtype=pb.FLOAT32, dim=2, rows=1, data=np.array([1.0, bad], dtype="<f4").tobytes())
    with pytest.raises(codec.InvalidMessage, match="NaN or Inf"):
        codec.decode_deltas(pb.ClassDeltas(class_ids=["a"], counts=[1], means=matrix))
    with pytest.raises(codec.InvalidMessage, match="not finite"):
        codec.encode_matrix(np.array([[1.0, bad]]))


def test_float16_overflow_is_refused_when_encoding() -> None:
    with pytest.raises(codec.InvalidMessage, match="float16"):
        codec.encode_matrix(np.array([[1e6]]), "float16")


def test_one_validation_for_every_caller() -> None:
    """Codec, store and Flower records refuse the same deltas with the same text (`proto.validate`)."""
    from fedrecon.proto.flower_records import prototypes_record, read_prototypes
    from fedrecon.proto.validate import InvalidDeltas, validate
    from fedrecon.server.errors import InvalidPush
    from fedrecon.server.store import PrototypeStore

    text = "class_id 'a' appears more than once"
    with pytest.raises(InvalidDeltas, match=text):
        validate(Deltas(["a", "a"], np.ones(2, np.int64), np.zeros((2, 2))))
    with pytest.raises(codec.InvalidMessage, match=text):
        codec.decode_deltas(pb.ClassDeltas(class_ids=["a", "a"], counts=[1, 1],
                                           means=codec.encode_matrix(np.zeros((2, 2)))))
    with pytest.raises(ValueError, match=f"prototype record: {text}"):
        read_prototypes(prototypes_record(np.ones(2, np.int64), np.zeros((2, 2))), ["a", "a"])
    with PrototypeStore() as store, pytest.raises(InvalidPush, match=text):
        store.push("c", 1, "s", Deltas(["a", "a"], [1, 1], np.zeros((2, 2))))
