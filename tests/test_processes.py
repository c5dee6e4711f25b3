"""Worker processes die with their parent; SIGTERM stops a command like Ctrl-C; a Dask cluster without workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from napari_lnm.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def _alive(pids) -> list[int]:
    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out


def test_pool_workers_die_when_the_parent_is_killed(tmp_path):
    """SIGKILL of the parent (no cleanup runs) leaves no worker process behind."""
    script = textwrap.dedent("""
        import os, sys, time
        from napari_lnm.engine import LocalPool
        pool = LocalPool(2)
        pids = {pool.submit(os.getpid).result() for _ in range(20)}
        pool.submit(time.sleep, 60)
        print(" ".join(map(str, sorted(pids))), flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert pids and _alive(pids)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 10
        while _alive(pids) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(pids), "worker processes outlived their killed parent"
    finally:
        if proc.poll() is None:
            proc.kill()


def test_sigterm_stops_extract_keeps_finished_slides(tmp_path):
    """SIGTERM during a 2-worker cohort extraction: exit 143 within 5 s, finished slides kept, no workers left."""
    from napari_lnm.synth import make_cohort

    csv = make_cohort(tmp_path / "c", n_slides=4, seed=2, size=(1536, 1536))
    out = tmp_path / "f"
    cmd = [sys.executable, "-c", "import sys; from napari_lnm.cli import main; sys.exit(main())", "extract",
           "--cohort", str(csv), "--out", str(out), "--workers", "2", "--tile-size", "256"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not list(out.glob("*.parquet")) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        children = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
        assert time.monotonic() - t0 < 5.0
        if proc.returncode == 0:
            pytest.skip("the extraction finished before the signal")
        assert proc.returncode == 143, err
        assert "terminated; finished outputs were kept" in err and "Traceback" not in err
        done = list(out.glob("*.parquet"))
        assert 1 <= len(done) < 4
        time.sleep(1.0)
        assert not [p for p in _alive(children) if "resource_tracker" not in " ".join(psutil.Process(p).cmdline())]
    finally:
        if proc.poll() is None:
            proc.kill()


def test_dask_scheduler_without_workers_is_an_error():
    distributed = pytest.importorskip("distributed")
    from napari_lnm.engine import DaskExecutor

    with distributed.LocalCluster(n_workers=0, processes=False, dashboard_address=None) as cluster:
        t0 = time.monotonic()
        with pytest.raises(UserError, match="no worker"):
            DaskExecutor(cluster.scheduler_address, wait_for_workers_s=1.0)
        assert time.monotonic() - t0 < 15
