"""The collecting processes' garbage-collector thresholds: applied, overridable, and a bad override named."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from trainscope.cli import main
from trainscope.gc_tuning import ENV, INGEST_THRESHOLDS, GcSettingError, thresholds_from, tune_for_ingest


@pytest.fixture
def restore_gc() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.set_threshold(*before)


def test_thresholds_from_values() -> None:
    assert thresholds_from(None) == thresholds_from("") == INGEST_THRESHOLDS
    assert thresholds_from("default") is None
    assert thresholds_from("5000") == (5000,)
    assert thresholds_from(" 2000, 20,30 ") == (2000, 20, 30)
    for bad in ("x", "0", "1,2,3,4", "-5,10", "1,,2"):
        with pytest.raises(GcSettingError, match=ENV):
            thresholds_from(bad)


def test_tune_applies_the_ingest_thresholds_or_the_override(restore_gc: None,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    gc.set_threshold(700, 10, 10)
    monkeypatch.delenv(ENV, raising=False)
    assert tune_for_ingest() == INGEST_THRESHOLDS == gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    monkeypatch.setenv(ENV, "default")
    assert tune_for_ingest() == (700, 10, 10)
    monkeypatch.setenv(ENV, "3000,5,5")
    assert tune_for_ingest() == (3000, 5, 5)


def test_bad_override_stops_the_collecting_command_with_its_name(restore_gc: None, tmp_path,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(ENV, "lots")
    manifest = tmp_path / "wl.yaml"
    manifest.write_text("apiVersion: trainscope.io/v1alpha1\nkind: Workload\nmetadata: {name: x}\n"
                        "spec: {sources: [{name: tb, tensorboard: {logDir: /nowhere}}]}\n")
    assert main(["local", "-f", str(manifest), "--database-url", "postgresql://127.0.0.1:1/none"]) == 2
    err = capsys.readouterr().err
    assert "trainscope local:" in err and "TRAINSCOPE_GC_THRESHOLDS='lots'" in err
