"""A launcher that was asked for several processes but started one is named, with the fix."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hyperrep_hf.launch import check_launch

ROOT = Path(__file__).resolve().parents[1]


def test_accelerates_single_process_cpu_launch_is_named(monkeypatch, recwarn):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.warns(UserWarning, match=r"asked for several processes but started only this one.*--multi_gpu --num_processes N"):
        check_launch()
    monkeypatch.setenv("WORLD_SIZE", "2")  # a real two-process launch
    check_launch()
    monkeypatch.delenv("MASTER_ADDR")  # accelerate launch of one process, as asked
    monkeypatch.delenv("WORLD_SIZE")
    check_launch()
    assert not recwarn.list


def test_accelerate_launch_cpu_num_processes_2_says_so(tmp_path):
    """The trap itself: `accelerate launch --cpu --num_processes 2` starts one process; the zoo build says so."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", str(ROOT / "scripts" / "build_zoo.py"),
           "--preset", "digits-seed", "--num-models", "3", "--epochs", "0", "--out", str(tmp_path / "zoo"), "--quiet"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path,
                            env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "asked for several processes but started only this one" in result.stderr
