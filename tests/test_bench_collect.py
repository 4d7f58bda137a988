"""bench's RESULTS.md joins only figures of one clean commit that the documented command produced."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import common  # noqa: E402  (bench/ is a folder of scripts, not a package)


def _section(out: Path, name: str, script: str, commit: str, run_id: str | None) -> None:
    data = {"commit": commit, "command": f"python bench/{script} --repeats 5", "rows": []}
    if run_id:
        data["run_id"] = run_id
    (out / f"{name}.json").write_text(json.dumps(data))
    (out / f"{name}.md").write_text(f"# {name}\n\nfigures of {commit}\n")


@pytest.fixture
def results(tmp_path, monkeypatch):
    out = tmp_path / "results"
    out.mkdir()
    monkeypatch.setenv("BENCH_RESULTS_DIR", str(out))
    return out


def test_one_commit_is_joined_and_older_sections_are_named_as_left_out(results):
    _section(results, "throughput", "throughput.py", "abc1234", "run1")
    _section(results, "padding", "padding.py", "abc1234", "run1")
    _section(results, "recipe_quality", "recipe_quality.py", "abc1234", None)  # run on its own, same code
    _section(results, "prepare_speed", "prepare_speed.py", "0ld0000", None)
    target = common.collect("python -m bench", "run1", ["padding.py", "throughput.py"])
    text = target.read_text()
    assert "at commit abc1234" in text and "figures of abc1234" in text
    assert "figures of 0ld0000" not in text and "prepare_speed (0ld0000)" in text
    assert set(json.loads((results.parent / "RESULTS.json").read_text())["results"]) == {
        "throughput", "padding", "recipe_quality"}


def test_the_gpu_collection_holds_only_its_own_sections_and_leaves_results_md_alone(results):
    _section(results, "throughput_gpt2_tiny_cuda_bf16", "throughput.py", "abc1234", "gpu1")
    _section(results, "padding", "padding.py", "abc1234", None)  # a CPU section of the same commit
    target = common.collect("python -m bench --device cuda", "gpu1", ["throughput.py"], name="RESULTS_CUDA",
                            join_others=False)
    assert target.name == "RESULTS_CUDA.md" and "figures of abc1234" in target.read_text()
    assert set(json.loads((results.parent / "RESULTS_CUDA.json").read_text())["results"]) == {
        "throughput_gpt2_tiny_cuda_bf16"}
    assert not (results.parent / "RESULTS.md").exists()


@pytest.mark.parametrize(("commits", "scripts", "message"), [
    (("abc1234", "def5678"), ["throughput.py", "padding.py"], "sections measured at abc1234, def5678"),
    (("abc1234+dirty", "abc1234+dirty"), ["throughput.py", "padding.py"], "sections measured at abc1234+dirty"),
    (("abc1234+changed (now def5678)", "abc1234+changed (now def5678)"), ["throughput.py", "padding.py"],
     "sections measured at abc1234+changed"),
    (("abc1234", "abc1234"), ["throughput.py", "padding.py", "startup.py"], "no section from startup.py"),
])
def test_mixed_dirty_or_missing_sections_are_refused(results, commits, scripts, message):
    _section(results, "throughput", "throughput.py", commits[0], "run1")
    _section(results, "padding", "padding.py", commits[1], "run1")
    with pytest.raises(common.MixedResults, match=re.escape(message)):
        common.collect("python -m bench", "run1", scripts)
    assert not (results.parent / "RESULTS.md").exists()


def test_sections_of_an_earlier_run_do_not_count_as_this_runs(results):
    _section(results, "throughput", "throughput.py", "abc1234", "run0")
    with pytest.raises(common.MixedResults, match="no section from throughput.py"):
        common.collect("python -m bench", "run1", ["throughput.py"])


def test_benchmark_outputs_do_not_mark_the_code_dirty(tmp_path, monkeypatch):
    import subprocess

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    (tmp_path / "bench" / "results").mkdir(parents=True)
    (tmp_path / "bench" / "results" / "throughput.md").write_text("old figures\n")
    (tmp_path / "train.py").write_text("code\n")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    monkeypatch.setattr(common, "ROOT", tmp_path)
    (tmp_path / "bench" / "results" / "throughput.md").write_text("new figures\n")  # what a section writes
    (tmp_path / "bench" / "results" / "new_section.md").write_text("new section\n")
    clean = common._head()
    assert not clean.endswith("+dirty")
    (tmp_path / "helper.py").write_text("new code, not yet added\n")  # an untracked module is code too
    assert common._head() == clean + "+dirty"
    (tmp_path / "helper.py").unlink()
    (tmp_path / "train.py").write_text("changed code\n")
    assert common._head() == clean + "+dirty"


def test_a_tree_that_changes_during_a_run_is_named_as_changed(monkeypatch):
    """The commit is read when the benchmark starts; a different tree when it writes marks the section."""
    monkeypatch.setattr(common, "_AT_START", "abc1234")
    monkeypatch.setattr(common, "_head", lambda: "abc1234")
    assert common.commit() == "abc1234"
    monkeypatch.setattr(common, "_head", lambda: "def5678")
    assert common.commit() == "abc1234+changed (now def5678)"


def test_a_median_interval_says_faster_only_when_clear_of_one():
    assert common.verdict([1.10, 1.12, 1.08, 1.11, 1.09]) == "faster"
    assert common.verdict([0.90, 0.92, 0.88, 0.91, 0.89]) == "slower"
    assert common.verdict([0.95, 1.06, 0.99, 1.04, 0.97]) == "parity"
    med, lo, hi = common.median_interval([1.0, 1.2, 0.9, 1.1, 1.05, 0.95, 1.15, 1.02])
    assert lo <= med <= hi and lo < 1.0 < hi
    # More repeats of the same spread: a narrower interval.
    _, lo8, hi8 = common.median_interval([0.98, 1.02] * 4)
    _, lo64, hi64 = common.median_interval([0.98, 1.02] * 32)
    assert hi64 - lo64 <= hi8 - lo8


def test_a_target_is_met_only_when_the_whole_interval_is_on_its_side():
    clear = common.paired([1.10, 1.12, 1.08, 1.11, 1.09], [1.0] * 5)
    assert clear["verdict"] == "faster" and common.judged(clear, at_least=1.0) == "met"
    assert common.judged(clear, at_most=1.05) == "NOT met"
    spans = common.paired([0.95, 1.06, 0.99, 1.04, 0.97], [1.0] * 5)
    assert spans["lo95"] < 1.0 < spans["hi95"]
    assert common.judged(spans, at_least=1.0).startswith("not shown")
    # times: lower is better, so a ratio clear below 1 is "faster"
    assert common.paired([0.7, 0.72, 0.69, 0.71, 0.7], [1.0] * 5, higher_is_better=False)["verdict"] == "faster"
    few = common.paired([1.2, 1.3], [1.0, 1.0])
    assert few["verdict"] == "too few repeats" and common.judged(few, at_least=1.0).startswith("not judged")
    with pytest.raises(ValueError):
        common.paired([1.0, 1.0], [1.0])  # unpaired lists are an error, not a silent zip
    assert common.said(clear) == f"1.100x (95% {clear['lo95']:.3f}-{clear['hi95']:.3f}: faster)"


FAKE = """import json, os, sys
from pathlib import Path
name = Path(__file__).stem
out = Path(os.environ["BENCH_RESULTS_DIR"])
with open(out.parent / "ran.log", "a") as log:
    log.write(f"{name} {os.environ['BENCH_RUN_ID']}\\n")
if (out.parent / f"fail_{name}").exists():
    sys.exit(1)
(out / f"{name}.json").write_text(json.dumps({"commit": "abc1234", "command": f"python bench/{name}.py",
                                              "run_id": os.environ["BENCH_RUN_ID"]}))
(out / f"{name}.md").write_text(f"# {name}\\n\\nfigures\\n")
"""


def _suite(tmp_path, monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_main", Path(common.__file__).with_name("__main__.py"))
    suite = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(suite)
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    for name in ("fake_a", "fake_b"):
        (scripts / f"{name}.py").write_text(FAKE)
    monkeypatch.setattr(suite, "HERE", scripts)
    monkeypatch.setattr(suite, "FULL", [["fake_a.py", "--repeats", "5"], ["fake_b.py"]])
    monkeypatch.setattr(common, "commit", lambda: "abc1234")
    return suite


def _run(suite, monkeypatch, *argv):
    monkeypatch.setattr(sys, "argv", ["bench", *argv])
    suite.main()


def test_an_interrupted_suite_resumes_with_only_what_is_left_under_the_same_run(results, tmp_path, monkeypatch):
    suite = _suite(tmp_path, monkeypatch)
    (tmp_path / "fail_fake_b").touch()
    with pytest.raises(SystemExit, match=r"failed: fake_b.py .*--resume"):
        _run(suite, monkeypatch)
    assert json.loads((results / "suite.progress").read_text())["done"] == ["fake_a.py --repeats 5"]
    (tmp_path / "fail_fake_b").unlink()
    _run(suite, monkeypatch, "--resume")
    ran = [line.split() for line in (tmp_path / "ran.log").read_text().splitlines()]
    assert [name for name, _ in ran] == ["fake_a", "fake_b", "fake_b"]  # fake_a did not run again
    assert len({run for _, run in ran}) == 1
    assert "at commit abc1234" in (tmp_path / "RESULTS.md").read_text()
    assert not (results / "suite.progress").exists()


def test_a_suite_resumes_only_at_the_commit_it_started_at(results, tmp_path, monkeypatch):
    suite = _suite(tmp_path, monkeypatch)
    with pytest.raises(SystemExit, match="nothing to resume"):
        _run(suite, monkeypatch, "--resume")
    (tmp_path / "fail_fake_a").touch()
    with pytest.raises(SystemExit, match="failed"):
        _run(suite, monkeypatch)
    monkeypatch.setattr(common, "commit", lambda: "def5678")
    with pytest.raises(SystemExit, match="cannot resume: the interrupted run was `python -m bench` at abc1234"):
        _run(suite, monkeypatch, "--resume")
