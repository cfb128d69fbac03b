"""Experiment runs: status and run counts, --resume, per-run seeds, progress lines, clear option errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fedrecon.experiments.runner import load_config, run_experiment
from fedrecon.main import main

TIMING = {"created", "wall_seconds", "update_ms_per_class", "embed_ms_per_class", "merge_ms_per_class",
          "fedrecon_update_ms_per_class", "fedrecon_update_ms_per_class_excluding_embedding"}


def tiny_config() -> dict[str, Any]:
    """glyphs-fed shrunk to seconds: 12 classes, 2 clients, 3 runs of fedrecon and centralized, 2 of lower."""
    config = load_config("glyphs-fed")
    config["experiment"].update({"encoder": "random", "runs": 3, "methods": ["fedrecon", "centralized", "lower"]})
    config["dataset"].update({"classes": 12, "drawings": 8})
    config["protocol"].update({"classes": 12, "clients": 2, "classes_per_mission": 2, "train_shots": 5,
                               "test_shots": 3})
    config["runs"] = {"lower": 2}
    config["methods"] = {"lower": {"epochs": 1, "batch_size": 32, "lr": 1e-3}}
    return config


def without_timing(value: Any) -> Any:
    """The document with every wall-clock field dropped (everything else must match exactly)."""
    if isinstance(value, dict):
        return {k: without_timing(v) for k, v in value.items() if k not in TIMING}
    if isinstance(value, list):
        return [without_timing(v) for v in value]
    return value


class Stop(KeyboardInterrupt):
    """What a person's Ctrl-C raises, after a given number of finished runs."""


def test_a_stopped_experiment_resumed_equals_an_uninterrupted_one(tmp_path: Path, capsys) -> None:
    config = tiny_config()
    whole = run_experiment(config, progress=False, out=tmp_path / "whole")
    assert whole["status"] == "complete" and whole["finished_runs"] == whole["planned_runs"] == 8
    finished: list[dict[str, Any]] = []

    def stop_after_three(result: dict[str, Any]) -> None:
        finished.append(result)
        if len(finished) == 3:
            raise Stop

    with pytest.raises(Stop):
        run_experiment(config, progress=False, out=tmp_path / "stopped", on_run=stop_after_three)
    partial = json.loads((tmp_path / "stopped" / "results.json").read_text())
    assert partial["status"] == "incomplete" and partial["finished_runs"] == 3 and partial["planned_runs"] == 8
    assert "status: incomplete, 3 of 8 method runs finished" in (tmp_path / "stopped" / "summary.md").read_text()
    capsys.readouterr()

    assert main(["experiment", "--resume", str(tmp_path / "stopped"), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "resuming: 3/8 runs already finished" in err
    progress = [line for line in err.splitlines() if line.startswith("[")]
    assert [line.split("]")[0] for line in progress] == [f"[{i}/8" for i in range(4, 9)]  # one line per run
    resumed = json.loads((tmp_path / "stopped" / "results.json").read_text())
    uninterrupted = json.loads((tmp_path / "whole" / "results.json").read_text())
    assert resumed["status"] == "complete" and resumed["finished_runs"] == 8
    assert without_timing(resumed) == without_timing(uninterrupted)
    assert [r["seed"] for r in resumed["methods"]["fedrecon"]["per_run"]] == [0, 1, 2]
    assert [r["seed"] for r in resumed["methods"]["lower"]["per_run"]] == [0, 1]


def test_every_method_times_its_own_first_run_and_counts_raw_image_uploads(tmp_path: Path) -> None:
    config = tiny_config()
    config["experiment"].update({"runs": 1, "methods": ["fedrecon", "centralized"]})
    doc = run_experiment(config, progress=False)
    central = doc["methods"]["centralized"]
    assert central["per_run"][0]["cold"] and central["embed_ms_per_class"] > 0
    per_merge = central["bytes_per_merge"]
    assert all(up > 0 for up, _ in per_merge)  # the raw images moved in every merge
    assert sum(up for up, _ in per_merge) == central["bytes_up"]
    assert "met" not in json.dumps(doc["comparisons"])


def test_published_figures_are_reference_rows() -> None:
    from fedrecon.experiments.results import reference_line

    line = reference_line(load_config("omniglot-cil")["anchors"])
    assert line.startswith("reference: paper ~86%, ANML 63.8%, OML 18.2%")


@pytest.mark.parametrize(("argv", "expected"), [
    (["omniglot-cil", "--clients", "3"], "--clients does not apply to omniglot-cil"),
    (["glyphs-fed", "--set", "protocol.clases=10"], "unknown parameter 'clases' (did you mean 'classes'?)"),
    (["glyphs-fed", "--set", "experiment.run=2"], "unknown key in [experiment]: run (did you mean runs?)"),
    (["glyphs-fed", "--set", "methods.lower.epoch=2"], "unknown key in [methods.lower]: epoch (did you mean epochs?)"),
    (["glyphs-fed", "--methods", "fedrecon,fedavgg"], "unknown method fedavgg (did you mean fedavg?)"),
    (["glyphs-fed", "--transport", "grcp"], "unknown transport grcp (did you mean grpc?)"),
    (["--resume", "/nonexistent/run"], "no results.json there"),
])
def test_bad_options_give_one_clear_line_and_exit_2(argv: list[str], expected: str, capsys) -> None:
    assert main(["experiment", *argv, "--out", "/nonexistent/never-written"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err and "Traceback" not in err
    assert "valid" in err or "no results.json" in err


def test_plots_use_classes_seen_and_say_when_lines_are_identical(tmp_path: Path, monkeypatch) -> None:
    import matplotlib.axes

    from fedrecon.experiments.results import identical_to, write_all

    assert identical_to({"a": [1, 2], "b": [1, 3], "c": [1, 2], "d": [1, 3]}) == {"c": "a", "d": "b"}
    drawn: list[tuple[Any, Any, str]] = []
    original = matplotlib.axes.Axes.plot

    def record(self, *args, **kwargs):
        drawn.append((list(args[0]), list(args[1]), kwargs.get("label", "")))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", record)
    config = tiny_config()
    config["experiment"].update({"runs": 1})
    config["protocol"]["clients"] = 1  # one client: checkpoint-like growth of classes seen
    doc = run_experiment(config, progress=False)
    write_all(doc, tmp_path)
    seen = [p[0] for p in doc["methods"]["fedrecon"]["curve"]]
    labels = [label for _, _, label in drawn]
    assert "centralized (identical to fedrecon)" in labels  # the accuracy line it would hide
    byte_lines = {label: (x, y) for x, y, label in drawn[-3:]}  # bytes.png: every method, centralized included
    assert set(byte_lines) == {"fedrecon", "centralized", "lower"}
    for x, y in byte_lines.values():
        assert x == seen and all(b >= a for a, b in zip(y, y[1:], strict=False))  # classes seen, cumulative
