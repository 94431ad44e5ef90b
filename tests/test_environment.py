"""The environment record: what a run's numbers depend on beyond its config, and what changed on a resume."""
import json

import pytest
import torch

from attentive.environment import (ENVIRONMENT_NAME, NUMERIC_KEYS, describe_environment, environment_changes,
                                   environment_summary, group_by_machine, record_start)
from attentive.fileio import BadFileError


def test_describe_environment_names_the_cpu_threads_and_library_versions():
    env = describe_environment()
    assert set(NUMERIC_KEYS) <= set(env) and {"cpu_count", "platform", "python", "date"} <= set(env)
    assert env["threads"] == torch.get_num_threads() and describe_environment(threads=3)["threads"] == 3
    assert env["packages"]["torch"] == env["torch"] == torch.__version__  # with its build tag
    assert env["packages"]["numpy"] is not None and env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert env["gpu"] is None and env["cuda"] is None  # a cpu run
    json.dumps(env)  # JSON as it is


def test_summary_line_names_cpu_threads_and_versions():
    env = describe_environment(threads=3)
    line = environment_summary(env)
    assert line.startswith(f"{env['cpu']} ({env['cpu_id']}), {env['cpu_capability']}, 3 threads, torch {torch.__version__}")
    assert "CUDA" not in line and "CUDA 13.0" in environment_summary({**env, "gpu": "H100", "cuda": "13.0"})


def test_changes_list_what_can_change_numbers_and_nothing_else():
    env = describe_environment(threads=2)
    assert environment_changes(env, dict(env)) == []
    other = {**env, "threads": 4, "date": "2000-01-01", "platform": "another kernel",
             "packages": {**env["packages"], "xgboost": "0.1"}}
    assert environment_changes(env, other) == ["threads: 2 -> 4", f"xgboost: {env['packages']['xgboost']} -> 0.1"]
    assert environment_changes(env, {**env, "cpu": "Intel Xeon"}) == [f"cpu: {env['cpu']} -> Intel Xeon"]


def test_ranks_with_the_same_environment_share_one_entry():
    a, b = describe_environment(threads=1), describe_environment(threads=1)
    b["date"] = "another second"  # the date is not a difference
    c = {**a, "cpu": "another node's CPU"}
    groups = group_by_machine([a, b, c, a])
    assert [g["ranks"] for g in groups] == [[0, 1, 3], [2]] and groups[1]["cpu"] == "another node's CPU"
    assert all("date" not in g for g in groups)


def test_record_start_appends_on_resume_and_names_the_changes(tmp_path):
    env = describe_environment(threads=2)
    assert record_start(tmp_path, [env], step=0, resumed=False) == []
    assert record_start(tmp_path, [env], step=50, resumed=True) == []  # same machine: nothing to say
    moved = {**env, "threads": 1}
    assert record_start(tmp_path, [moved, moved], step=90, resumed=True) == [
        "machines: 1 distinct over 1 ranks -> 1 over 2", "threads: 2 -> 1"]
    record = json.loads((tmp_path / ENVIRONMENT_NAME).read_text())
    assert [(s["step"], s["world_size"]) for s in record["starts"]] == [(0, 1), (50, 1), (90, 2)]
    assert record["starts"][2]["machines"][0]["ranks"] == [0, 1]
    # A fresh run in the same directory starts a new record.
    assert record_start(tmp_path, [moved], step=0, resumed=False) == []
    assert len(json.loads((tmp_path / ENVIRONMENT_NAME).read_text())["starts"]) == 1


def test_record_of_several_machines_prefixes_changes_with_their_ranks(tmp_path):
    a, b = describe_environment(threads=2), {**describe_environment(threads=2), "cpu": "node 2"}
    record_start(tmp_path, [a, b], step=0, resumed=False)
    assert record_start(tmp_path, [a, {**b, "threads": 8}], step=10, resumed=True) == ["ranks [1]: threads: 2 -> 8"]


@pytest.mark.parametrize("content, message", [
    ("{\"starts\": [", "not a readable environment record"),
    (json.dumps({"format": "something else", "format_version": 1}), "not an environment record"),
    (json.dumps({"format": "attentive-environment", "format_version": 99}), "environment record format version 99"),
])
def test_a_damaged_or_foreign_record_is_refused_naming_it(tmp_path, content, message):
    (tmp_path / ENVIRONMENT_NAME).write_text(content)
    with pytest.raises(BadFileError, match=rf"{tmp_path / ENVIRONMENT_NAME}.*{message}"):
        record_start(tmp_path, [describe_environment()], step=5, resumed=True)


def test_a_resumed_run_without_a_record_starts_one(tmp_path):
    assert record_start(tmp_path, [describe_environment()], step=7, resumed=True) == []
    assert json.loads((tmp_path / ENVIRONMENT_NAME).read_text())["starts"][0]["step"] == 7
