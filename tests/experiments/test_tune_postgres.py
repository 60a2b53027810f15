"""Two `medtl tune` workers, as separate processes, searching one Optuna study in a PostgreSQL server that the
test starts on 127.0.0.1 (Debian's postgresql package)."""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import optuna
import pytest

pytestmark = pytest.mark.slow  # starts a PostgreSQL server and two worker processes

DONE = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def _server_bin() -> Path | None:
    """The folder of initdb/pg_ctl/createdb: from PATH, else Debian's newest /usr/lib/postgresql/N/bin."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    folders = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3]))
    return folders[-1].parent if folders else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_server_user(*cmd) -> None:
    """PostgreSQL refuses to run as root: as root, run the tools as the `postgres` user the package made."""
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    done = subprocess.run([*prefix, *map(str, cmd)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{cmd[0]} failed: {done.stderr or done.stdout}"


@pytest.fixture(scope="module")
def postgres_url():
    bin_ = _server_bin()
    if bin_ is None:
        reason = "PostgreSQL server binaries are absent (apt-get install postgresql)"
        if os.environ.get("MEDTL_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"{reason}, and MEDTL_REQUIRE_POSTGRES=1")
        pytest.skip(reason)
    root = Path(tempfile.mkdtemp(prefix="medtl-pg-"))  # not under pytest's root-only tmp folder
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    data, port = root / "data", _free_port()
    _as_server_user(bin_ / "initdb", "-D", data, "-A", "trust", "-U", "postgres", "--no-sync")
    _as_server_user(bin_ / "pg_ctl", "-D", data, "-l", root / "server.log", "-w", "-t", "60", "-o",
                    f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
    try:
        _as_server_user(bin_ / "createdb", "-h", "127.0.0.1", "-p", port, "-U", "postgres", "medtl")
        yield f"postgresql://postgres@127.0.0.1:{port}/medtl"
    finally:
        _as_server_user(bin_ / "pg_ctl", "-D", data, "-m", "fast", "-w", "stop")
        shutil.rmtree(root)


def test_two_workers_complete_one_study_with_no_duplicated_trials(image_tree, tmp_path, postgres_url):
    env = {**os.environ, "MEDTL_CACHE": str(tmp_path / "cache")}
    out = tmp_path / "tune"
    cmd = [sys.executable, "-m", "medtl", "tune", str(image_tree), "--trials", "3", "--strategy", "linear",
           "--epochs", "3", "--image-size", "32", "--storage", postgres_url, "--study-name", "shared",
           "--out", str(out), "--quiet"]
    workers = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
               for _ in range(2)]
    for w in workers:
        _, err = w.communicate(timeout=600)
        assert w.returncode == 0, err[-3000:]

    trials = optuna.load_study(study_name="shared", storage=postgres_url).trials
    assert sorted(t.number for t in trials) == list(range(6))  # 3 + 3, each number handed out once
    assert all(t.state in DONE for t in trials), [t.state for t in trials]
    assert sorted(Counter(t.user_attrs["worker"] for t in trials).values()) == [3, 3]  # both workers took part
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 6  # no configuration tried twice
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert complete
    assert sorted(p.name for p in (out / "trials").iterdir()) == sorted(f"trial-{t.number:04d}" for t in complete)
    for t in complete:
        assert Path(t.user_attrs["run_dir"]) == out / "trials" / f"trial-{t.number:04d}"
    spans = {w: [(t.datetime_start, t.datetime_complete) for t in trials if t.user_attrs["worker"] == w]
             for w in {t.user_attrs["worker"] for t in trials}}
    (a, b) = spans.values()
    assert min(e for _, e in a) > min(s for s, _ in b) and min(e for _, e in b) > min(s for s, _ in a)  # concurrent
