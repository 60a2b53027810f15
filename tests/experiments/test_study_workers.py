"""Studies on many workers: local lock files (fast, with a stand-in for training) and PostgreSQL (slow: two
`medtl study` processes, one SIGKILLed mid-run, against a server the test starts as medtl tune's test does)."""

import csv
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from medtl.core.errors import MedtlError
from medtl.experiments.study.grid import load_study, run_study
from medtl.experiments.study.queue import LocalQueue, masked
from test_tune_postgres import postgres_url  # noqa: F401  (the module-scoped server fixture)

GRID = """name: {name}
out: {out}
base:
  data: {{path: {data}, image_size: 32}}
  model: {{backbone: resnet18, weights: none, strategy: full}}
  train: {{epochs: {epochs}, batch_size: 16}}
grid:
  lr: [0.001, 0.01]
  seed: [0, 1, 2]
"""
POINTS = sorted(f"lr{lr}-s{s}" for lr in ("0.001", "0.01") for s in range(3))


def _spec(tmp_path: Path, data, out: Path, name="shared", epochs=1) -> Path:
    path = tmp_path / f"{out.name}.yaml"
    path.write_text(GRID.format(name=name, out=out, data=data, epochs=epochs))
    return path


# --- local workers: lock files in the study folder --------------------------------------------------------

def _stand_in(starts: Path, pause: float):
    """A stand-in for training: notes its start, fails if the folder exists (a point taken twice), waits, ends
    the run as a real one does (metrics.json last)."""
    def run(cfg, progress=False, on_epoch=None, parents=None):  # training.run.run's signature
        folder = Path(cfg.out) / cfg.name
        with open(starts, "a") as fh:
            fh.write(f"{cfg.name} {os.getpid()}\n")
        folder.mkdir(parents=True)  # not exist_ok: a second worker on the same point fails here
        time.sleep(pause)
        on_epoch(1, {})
        (folder / "metrics.json").write_text("{}")
        return folder
    return run


def _local_worker(spec: str, starts: str, pause: float) -> None:
    import medtl.training.run as training

    training.run = _stand_in(Path(starts), pause)
    run_study(load_study(spec), progress=False)


def test_two_local_workers_on_one_study_folder_run_each_point_once(image_tree, tmp_path):
    spec, starts = _spec(tmp_path, image_tree, tmp_path / "out"), tmp_path / "starts.txt"
    fork = multiprocessing.get_context("fork")
    workers = [fork.Process(target=_local_worker, args=(str(spec), str(starts), 0.3)) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
        assert w.exitcode == 0
    lines = [line.split() for line in starts.read_text().splitlines()]
    assert sorted(name for name, _ in lines) == POINTS  # each point started once, by one of the two
    assert len({pid for _, pid in lines}) == 2  # both workers took points
    runs = tmp_path / "out" / "shared" / "runs"
    assert sorted(p.parent.name for p in runs.glob("*/metrics.json")) == POINTS


def test_a_held_point_waits_for_its_worker_and_is_taken_when_that_worker_dies(image_tree, tmp_path):
    spec, starts = _spec(tmp_path, image_tree, tmp_path / "out"), tmp_path / "starts.txt"
    root = tmp_path / "out" / "shared"
    held = "lr0.01-s1"
    (root / "runs" / held).mkdir(parents=True)
    (root / "runs" / held / "half-written").write_text("the holder's unfinished run")
    (root / ".locks").mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time\nfh = open(sys.argv[1], 'a+')\n"
                               "fcntl.flock(fh, fcntl.LOCK_EX)\nprint('held', flush=True)\ntime.sleep(120)",
                               str(root / ".locks" / f"{held}.lock")], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    worker = multiprocessing.get_context("fork").Process(target=_local_worker, args=(str(spec), str(starts), 0.05))
    worker.start()
    deadline = time.monotonic() + 60
    while len(list(root.glob("runs/*/metrics.json"))) < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    assert worker.is_alive()  # waiting on the held point, not taking it
    assert (root / "runs" / held / "half-written").exists()  # and not clearing the holder's folder
    holder.send_signal(signal.SIGKILL)  # the holder dies: its lock goes with it
    holder.wait()
    worker.join(60)
    assert worker.exitcode == 0
    assert sorted(line.split()[0] for line in starts.read_text().splitlines()) == POINTS
    assert not (root / "runs" / held / "half-written").exists()  # cleared by the worker that claimed it
    assert (root / "runs" / held / "metrics.json").exists()


def test_local_queue_skips_points_finished_meanwhile(tmp_path):
    queue = LocalQueue(tmp_path)
    done = {"b"}
    queue.register(["a", "b", "c"], "x", lambda n: n in done)
    first = queue.next()
    assert first.name == "a"
    other = LocalQueue(tmp_path)  # a second worker on the same folder
    other.register(["a", "b", "c"], "x", lambda n: n in done)
    assert other._lock("a", wait=False) is None  # a is held by the first
    assert other.next().name == "c"


def test_storage_urls_and_leases_are_refused_in_one_line(tmp_path):
    from medtl.experiments.study.postgres import PostgresQueue

    with pytest.raises(MedtlError, match=r"^--storage sqlite://\.\.\.: a study's queue needs PostgreSQL"):
        PostgresQueue("sqlite:///x.db", "s")
    with pytest.raises(MedtlError, match=r"^--lease-seconds 1: give at least 3"):
        PostgresQueue("postgresql://u@h/db", "s", lease_seconds=1)
    url = "postgresql://medtl:s3cret@127.0.0.1:1/x"
    queue = PostgresQueue(url, "s")
    with pytest.raises(MedtlError) as err:
        queue.register(["a"], "x", lambda n: False)
    assert str(err.value).startswith("--storage postgresql://medtl:***@127.0.0.1:1/x: ")
    assert "s3cret" not in str(err.value) and masked(url) == "postgresql://medtl:***@127.0.0.1:1/x"


def test_the_cli_prints_an_unreachable_database_as_one_error_line_without_the_password(image_tree, tmp_path):
    spec = _spec(tmp_path, image_tree, tmp_path / "out")
    done = subprocess.run([sys.executable, "-m", "medtl", "study", str(spec), "--storage",
                           "postgresql://medtl:s3cret@127.0.0.1:1/x"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("error: --storage postgresql://medtl:***@127.0.0.1:1/x: ")
    assert "s3cret" not in done.stderr + done.stdout
    assert "s3cret" not in "".join(p.read_text() for p in (tmp_path / "out").rglob("*") if p.is_file())


# --- workers on PostgreSQL ------------------------------------------------------------------------------

STARTED = re.compile(r"study shared: (\S+) started by (\S+) \(attempt (\d+)")


def _worker(spec: Path, url: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "medtl", "study", str(spec), "--storage", url, "--lease-seconds",
                             "8"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _points(url: str) -> dict[str, tuple]:
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as c:
            rows = c.execute(sqlalchemy.text("SELECT point, state, worker, attempts FROM medtl_study_point WHERE "
                                             "study = 'shared'")).all()
    except sqlalchemy.exc.ProgrammingError:  # the tables are not made yet
        return {}
    finally:
        engine.dispose()
    return {r.point: (r.state, r.worker, r.attempts) for r in rows}


def _table(path: Path) -> list[dict]:
    """report.csv without its timing columns (wall clock differs between any two runs)."""
    return [{k: v for k, v in row.items() if "seconds" not in k} for row in csv.DictReader(open(path))]


def _same(a: str, b: str) -> bool:
    try:
        return float(a) == pytest.approx(float(b), abs=1e-6, nan_ok=True)
    except ValueError:
        return a == b


@pytest.mark.slow
def test_two_workers_on_postgres_run_each_point_once_and_retake_a_killed_workers_point(
        image_tree, tmp_path, postgres_url):  # noqa: F811
    env = {**os.environ, "MEDTL_CACHE": str(tmp_path / "cache")}
    spec = _spec(tmp_path, image_tree, tmp_path / "shared")
    a, b = _worker(spec, postgres_url, env), _worker(spec, postgres_url, env)
    runs = tmp_path / "shared" / "shared" / "runs"
    deadline, killed = time.monotonic() + 300, None
    while killed is None and time.monotonic() < deadline:  # A mid-run: its claimed point's run folder exists
        mine = [p for p, (state, worker, _) in _points(postgres_url).items()
                if state == "running" and worker.endswith(f":{a.pid}") and (runs / p / "config.yaml").exists()]
        if mine:
            a.send_signal(signal.SIGKILL)
            killed = mine[0]
        time.sleep(0.05)
    assert killed, "worker A never ran a point"
    a_err = a.communicate(timeout=60)[1]
    b_out, b_err = b.communicate(timeout=600)
    assert b.returncode == 0, b_err[-3000:]

    points = _points(postgres_url)
    assert sorted(points) == POINTS and {s for s, _, _ in points.values()} == {"done"}
    assert points[killed][2] == 2 and points[killed][1].endswith(f":{b.pid}")  # re-run by B after the lease
    assert all(n == 1 for p, (_, _, n) in points.items() if p != killed)
    starts = [(p, w) for p, w, _ in STARTED.findall(a_err + b_err)]
    counts = Counter(p for p, _ in starts)
    assert counts == Counter({p: 2 if p == killed else 1 for p in POINTS}), starts  # each point run once (+ retake)
    assert (killed, points[killed][1].replace(str(b.pid), str(a.pid))) in starts  # A had started it
    assert f"{killed} started by" in b_err and "taken over from" in b_err
    assert sorted(p.parent.name for p in runs.glob("*/metrics.json")) == POINTS
    assert "report:" in b_out  # B finished last: it wrote the report

    one = _spec(tmp_path, image_tree, tmp_path / "one")  # the same points on one worker, no database
    done = subprocess.run([sys.executable, "-m", "medtl", "study", str(one), "--quiet"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    shared, single = _table(runs.parent / "report.csv"), _table(tmp_path / "one" / "shared" / "report.csv")
    assert len(shared) == len(single) == 2 and [list(r) for r in shared] == [list(r) for r in single]
    for x, y in zip(shared, single):
        assert all(_same(x[k], y[k]) for k in x), (x, y)
    assert postgres_url not in "".join(p.read_text(errors="replace") for p in runs.parent.rglob("*")
                                     if p.is_file() and p.suffix in (".yaml", ".md", ".html", ".csv", ".json", ".log"))
