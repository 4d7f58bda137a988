"""The resume compatibility check is one pure function: every refusal at once, allowances, warnings."""

from __future__ import annotations

import pytest

from chefgenius.checkpoint import ResumeError
from chefgenius.config import Config, load_config
from chefgenius.training.resume import check_changes

VERSIONS = {"torch": "2.13.0", "transformers": "5.24.0"}


def _meta(**over):
    meta = {"config": Config().to_dict(), "train_fingerprint": "abc", "num_threads": 2, "versions": dict(VERSIONS)}
    meta.update(over)
    return meta


def test_identical_run_resumes_without_changes_or_warnings():
    assert check_changes(_meta(), Config().to_dict(), train_fingerprint="abc", num_threads=2,
                          versions=VERSIONS) == ([], [])


def test_every_refused_difference_is_listed_at_once_with_the_flag_to_accept_it():
    now = load_config(None, ["training.learning_rate=1e-4", "logging.every_steps=3"]).to_dict()
    with pytest.raises(ResumeError) as err:
        check_changes(_meta(), now, train_fingerprint="xyz", num_threads=4, versions=VERSIONS)
    msg = str(err.value)
    for key in ("training.learning_rate", "data: checkpoint 'abc' vs now 'xyz'", "training.num_threads: checkpoint 2"):
        assert key in msg
    assert "--allow-change data" in msg and "--allow-change training.num_threads" in msg
    assert "logging" not in msg  # not a trajectory key


def test_allowed_changes_are_returned_and_said():
    now = load_config(None, ["training.num_epochs=99"]).to_dict()
    changes, warnings = check_changes(_meta(), now, train_fingerprint="xyz", num_threads=4, versions=VERSIONS,
                                       allow=("training.num_epochs", "data", "training.num_threads"))
    assert [c["key"] for c in changes] == ["training.num_epochs", "data", "training.num_threads"]
    assert len(warnings) == 3 and all("accepted on resume" in w for w in warnings)


def test_other_library_versions_warn_and_old_checkpoints_without_thread_count_pass():
    meta = _meta(versions={"torch": "2.4.0", "transformers": "5.24.0"})
    del meta["num_threads"]
    changes, warnings = check_changes(meta, Config().to_dict(), train_fingerprint="abc", num_threads=8,
                                       versions=VERSIONS)
    assert changes == [] and len(warnings) == 1 and "torch 2.4.0" in warnings[0]
