"""invwnn.bench.pool: results in the units' order over worker processes, workers that stop when their
parent is killed (a SIGTERM runs no clean-up in the parent), and the resumable log of finished units."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from invwnn.bench.pool import append_log, map_units, read_log, run_logged

UNITS = textwrap.dedent("""
    import os, time

    def square(u):
        return u[0] * u[0], os.getpid()

    def sleep_forever(u):
        with open(u[0], "w") as f:
            f.write(str(os.getpid()))
        time.sleep(300)
""")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _wait(check, seconds: float) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(0.2)
    return check()


def test_results_keep_the_units_order_over_workers(tmp_path, monkeypatch):
    (tmp_path / "pool_units.py").write_text(UNITS)
    monkeypatch.syspath_prepend(str(tmp_path))
    from pool_units import square
    seen = {}
    out = map_units(square, [(i,) for i in range(6)], jobs=2, progress=False,
                    on_result=lambda i, r: seen.setdefault(i, r))
    assert [r[0] for r in out] == [i * i for i in range(6)]
    assert seen == dict(enumerate(out))
    assert os.getpid() not in {r[1] for r in out}  # computed in workers, not here


def test_workers_exit_when_the_parent_is_killed(tmp_path):
    (tmp_path / "pool_units.py").write_text(UNITS)
    marks = [tmp_path / "a.pid", tmp_path / "b.pid"]
    script = (f"import sys; sys.path.insert(0, {str(tmp_path)!r})\n"
              "from pool_units import sleep_forever\n"
              "from invwnn.bench.pool import map_units\n"
              f"map_units(sleep_forever, [({str(marks[0])!r},), ({str(marks[1])!r},)], jobs=2, progress=False)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=Path(__file__).parents[1])
    try:
        assert _wait(lambda: all(m.exists() and m.read_text() for m in marks), 120), "workers never started"
        workers = [int(m.read_text()) for m in marks]
        assert all(_alive(p) for p in workers)
        parent.send_signal(signal.SIGTERM)
        parent.wait(30)
        assert _wait(lambda: not any(_alive(p) for p in workers), 30), "workers outlived their parent"
    finally:
        parent.kill()
        for m in marks:
            if m.exists() and m.read_text() and _alive(int(m.read_text())):
                os.kill(int(m.read_text()), signal.SIGKILL)


def test_the_log_resumes_finished_units_and_survives_a_cut_line(tmp_path):
    log = tmp_path / "units.jsonl"
    ran = []

    def unit(u):
        ran.append(u[0])
        return {"square": u[0] * u[0]}

    keyed = [(f"k{i}", (i,)) for i in range(4)]
    first = run_logged(unit, keyed[:2], log, progress=False)
    assert first == {"k0": {"key": "k0", "square": 0}, "k1": {"key": "k1", "square": 1}}
    with log.open("a") as f:
        f.write('{"key": "k2", "squ')  # a line cut by a kill
    assert run_logged(unit, keyed, log, progress=False)["k3"] == {"key": "k3", "square": 9}
    assert ran == [0, 1, 2, 3]  # k2 ran again, k0 and k1 did not
    assert set(read_log(log)) == {"k0", "k1", "k2", "k3"}
    append_log(log, {"key": "k0", "square": -1})  # the last row of a key wins
    assert read_log(log)["k0"]["square"] == -1
