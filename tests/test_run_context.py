"""What triggered a run, as the register stage tags it: set by the flows for their duration, experiment wins."""
from __future__ import annotations

import os

import pytest

from components.run_context import DETAIL_ENV, TRIGGER_ENV, trigger_tags, triggered_by

MANIFEST = {"adapt_rows": 412, "batches": {"rows_added": 30, "sha256": ["a" * 64, "b" * 64]}}


@pytest.fixture(autouse=True)
def no_dvc_experiment(monkeypatch):
    for name in ("DVC_EXP_BASELINE_REV", "DVC_EXP_NAME", TRIGGER_ENV, DETAIL_ENV):
        monkeypatch.delenv(name, raising=False)


def test_a_run_nobody_labelled_is_manual_and_counts_its_pool_and_batches():
    tags = trigger_tags(MANIFEST, adapt_rows=400)
    assert tags == {"trigger": "manual", "trigger_detail": "none", "adapt_pool_rows": "412", "adapt_rows": "400",
                    "batches_merged": "2", "batches_merged_sha256": f"{'a' * 16}, {'b' * 16}"}


def test_the_trigger_holds_inside_the_block_only():
    with triggered_by("new_batch", "new batch reviews.csv (30 rows); pending batches: aaaa"):
        tags = trigger_tags({})
    assert tags["trigger"] == "new_batch" and tags["trigger_detail"].startswith("new batch reviews.csv")
    assert tags["batches_merged"] == "0" and tags["adapt_pool_rows"] == "unknown"
    assert TRIGGER_ENV not in os.environ and trigger_tags({})["trigger"] == "manual"


def test_a_dvc_experiment_is_tagged_experiment_whatever_started_it(monkeypatch):
    monkeypatch.setenv("DVC_EXP_NAME", "k16")
    with triggered_by("schedule"):
        assert trigger_tags({})["trigger"] == "experiment" and trigger_tags({})["trigger_detail"] == "k16"


def test_an_unknown_trigger_is_refused():
    with pytest.raises(ValueError, match="unknown trigger 'cron'; expected one of schedule, new_batch"):
        with triggered_by("cron"):
            pass
