"""The ClientApp's evaluation in chunks: the same answers as all at once, with flat memory."""

from __future__ import annotations

from fedrecon.client.flower import get_encoder, load_data, parts, score
from fedrecon.client.memory import PrototypeMemory
from fedrecon.proto.flower_records import Assignment


def test_parts_cut_between_classes_within_the_limit() -> None:
    a = Assignment(("a", "b", "c", "d"), ((1, 2), (3,), (4, 5, 6, 7), (8,)))
    assert parts(a, 3) == [Assignment(("a", "b"), ((1, 2), (3,))), Assignment(("c",), ((4, 5, 6, 7),)),
                           Assignment(("d",), ((8,),))]
    assert parts(a, 100) == [a]
    assert parts(Assignment((), ()), 3) == []
    assert sum((p.classes for p in parts(a, 1)), ()) == a.classes


def test_score_in_chunks_equals_score_at_once(tmp_path) -> None:
    data = load_data("glyphs", str(tmp_path), 12, 6, 0)
    encoder = get_encoder("random", 0, "glyphs")
    memory = PrototypeMemory()
    for cid in data.class_ids:
        memory.add_examples([cid] * 3, encoder.embed(data.images(cid)[:3]))
    queries = Assignment(tuple(data.class_ids), tuple((3, 4, 5) for _ in data.class_ids))
    at_once = score(data, queries, encoder, memory, chunk=10_000)
    assert at_once[1] == 36 and 0 < at_once[0] <= 36
    for chunk in (1, 4, 7):
        assert score(data, queries, encoder, memory, chunk=chunk) == at_once
