"""`classify --unknown auto|DIST`: images of classes nobody learned are answered `unknown`, on real Omniglot."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from helpers import FEDRECON
from omniglot_pngs import folder_name, write_pngs

from fedrecon.client.memory import Prediction
from fedrecon.client.unknown import UNKNOWN, auto_threshold, parse_threshold, with_unknown
from fedrecon.proto.prototypes import PrototypeTable


def _classify(common: list[str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*FEDRECON, "client", "classify", *common, *args], capture_output=True, text=True,
                          timeout=300)


@pytest.mark.data
def test_unseen_classes_are_answered_unknown_and_known_ones_named(shared_data: Path, tmp_path: Path) -> None:
    train, test = write_pngs(shared_data, tmp_path / "png", classes=40, train=15, test=5)
    ids = list(train)
    known = ids[::2]  # every other character of the same alphabets: the unseen ones look alike
    root = tmp_path / "learn"
    root.mkdir()
    for cid in known:
        (tmp_path / "png" / "train" / folder_name(cid)).rename(root / folder_name(cid))
    common = ["--offline", "--server", "127.0.0.1:1", "--client-id", "ida", "--state-dir", str(tmp_path / "state"),
              "--encoder", "omniglot"]
    learned = subprocess.run([*FEDRECON, "client", "learn", *common, str(root)], capture_output=True, text=True,
                             timeout=300)
    assert learned.returncode == 0, learned.stderr
    queries = [str(f) for cid in ids for f in test[cid]]
    out = _classify(common, "--json", "--unknown", "auto", *queries)
    assert out.returncode == 0, out.stderr
    answers = [json.loads(line) for line in out.stdout.splitlines()]
    truth = {str(f): folder_name(cid) for cid in ids for f in test[cid]}
    is_known = np.array([truth[a["path"]] in {folder_name(c) for c in known} for a in answers])
    said_unknown = np.array([a["label"] == UNKNOWN for a in answers])
    known_right = np.array([a["label"] == truth[a["path"]] for a in answers])[is_known]
    unseen_rejected, known_accepted = said_unknown[~is_known].mean(), 1 - said_unknown[is_known].mean()
    print(f"unseen rejected {unseen_rejected:.3f}, known accepted {known_accepted:.3f}, "
          f"known accuracy {known_right.mean():.3f}")
    # measured: unseen rejected 0.70, known accepted 0.97, known accuracy 0.91 (20 known, 20 unseen characters)
    assert unseen_rejected >= 0.55 and known_accepted >= 0.85 and known_right.mean() >= 0.8, \
        (unseen_rejected, known_accepted, known_right.mean())
    names = {folder_name(c) for c in known}
    assert all(a["alternatives"][0]["label"] in names for a in answers if a["label"] == UNKNOWN)
    threshold = answers[0]["unknown_threshold"]
    assert all((a["label"] == UNKNOWN) == (a["distance"] > threshold) for a in answers)
    everything = _classify(common, "--json", "--unknown", "1e-9", *queries[:5])
    assert [json.loads(line)["label"] for line in everything.stdout.splitlines()] == [UNKNOWN] * 5
    bad = _classify(common, "--unknown", "-3", *queries[:1])
    assert bad.returncode == 2 and "positive squared distance" in bad.stderr


def test_auto_threshold_rule_and_its_refusals() -> None:
    table = PrototypeTable(2)
    table.add_examples(["a", "b", "c"], np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]]))
    # nearest other (squared): a 9, b 9, c 16 -> median 9
    assert auto_threshold(table, factor=1.0) == pytest.approx(9.0)
    one = PrototypeTable(2)
    one.add_examples(["a"], np.zeros((1, 2)))
    with pytest.raises(ValueError, match="at least 2 known classes"):
        auto_threshold(one)
    assert parse_threshold("auto") == "auto" and parse_threshold("2.5") == 2.5
    for bad in ("0", "-1", "nan", "inf", "far"):
        with pytest.raises(ValueError, match="--unknown"):
            parse_threshold(bad)
    answered = with_unknown([Prediction("a", 1.0, [("b", 2.0)]), Prediction("b", 10.0, [("a", 12.0)])], 5.0)
    assert answered[0].label == "a" and answered[1].label == UNKNOWN
    assert answered[1].alternatives == [("b", 10.0), ("a", 12.0)]
