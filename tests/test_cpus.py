"""The cores a process may use (affinity, container quota) and should keep busy."""

from __future__ import annotations

import os

import pytest

from vidattn.cpus import cpu_budget, thread_budget, usable_cores


def test_usable_cores_are_the_affinity_less_a_containers_quota(tmp_path):
    mine = len(os.sched_getaffinity(0))
    cpu_max = tmp_path / "cpu.max"
    assert usable_cores(cpu_max) == mine  # no such file: no cgroup v2 quota
    for text, want in (("max 100000\n", mine), ("50000 100000\n", 1),
                       ("100000 100000\n", 1), (f"{400000 * mine} 100000\n", mine),
                       ("garbled\n", mine), ("100000 0\n", mine)):
        cpu_max.write_text(text)
        assert usable_cores(cpu_max) == want, text
    if mine >= 2:
        cpu_max.write_text("200000 100000\n")
        assert usable_cores(cpu_max) == 2
        everywhere = os.sched_getaffinity(0)
        try:  # a batch system's allocation: the affinity, not the machine's cores
            os.sched_setaffinity(0, {min(everywhere)})
            assert usable_cores(tmp_path / "none") == 1
        finally:
            os.sched_setaffinity(0, everywhere)


@pytest.mark.parametrize("value, want", [
    ("1", 1), ("6", 6), ("4,2", 4), (" 3", 3), ("", None), ("0", None), ("-2", None),
    ("all", None), (",4", None)])
def test_thread_budget_reads_omp_num_threads(value, want):
    assert thread_budget({"OMP_NUM_THREADS": value}) == want
    assert thread_budget({}) is None


def test_cpu_budget_is_the_smaller_of_cores_and_thread_budget(tmp_path, monkeypatch):
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("300000 100000\n")  # a container of 3 cores
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    assert cpu_budget({}, cpu_max) == 3
    assert cpu_budget({"OMP_NUM_THREADS": "1"}, cpu_max) == 1  # a vidattn dask worker
    assert cpu_budget({"OMP_NUM_THREADS": "8"}, cpu_max) == 3  # never past the quota
    assert cpu_budget({"OMP_NUM_THREADS": "2"}, tmp_path / "none") == 2
    assert cpu_budget({}, tmp_path / "none") == 16
    monkeypatch.setenv("OMP_NUM_THREADS", "5")  # the process's own environment by default
    assert cpu_budget(cpu_max=tmp_path / "none") == 5
