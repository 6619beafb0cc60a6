"""Usage errors of every `xq` command exit 2 and name the flag, never a Python argument of the library
(`ids=`, `until_done`, `delay=`) nor a traceback.  CliRunner for the argument checks, a real subprocess for
the one the issue found (`xq events --until-done` without `--id`)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from xq.cli import main

PYTHON_NAMES = ("ids=", "until_done", "delay=", "eta=", "concurrency_key", "max_concurrency", "rate_key",
                "rate_limit", "unique_key", "unique_ttl", "max_retries", "result_ttl", "keep_dead", "max_age",
                "Traceback")

CASES = [
    (["events", "default", "--until-done"], "--until-done needs --id"),
    (["events", "--id", "", "--until-done"], "in --id"),
    (["enqueue", "x", "1", "--delay", "5", "--eta", "2000000000"], "give --delay or --eta, not both"),
    (["enqueue", "x", "1", "--max-concurrency", "2"], "give --concurrency-key and --max-concurrency together"),
    (["enqueue", "x", "1", "--concurrency-key", "k"], "give --concurrency-key and --max-concurrency together"),
    (["enqueue", "x", "1", "--rate-key", "k"], "give --rate-key and --rate-limit together"),
    (["enqueue", "x", "1", "--rate-key", "k", "--rate-limit", "abc"], "invalid --rate-limit 'abc'"),
    (["enqueue", "x", "1", "--unique-ttl", "5"], "--unique-ttl given without --unique-key"),
    (["enqueue", "x", "1", "--unique-key", ""], "invalid --unique-key ''"),
    (["enqueue", "x", "1", "--max-retries", "-1"], "invalid --max-retries -1"),
    (["enqueue", "x", "1", "--timeout", "-1"], "invalid --timeout -1"),
    (["enqueue", "x", "1", "--result-ttl", "-5"], "invalid --result-ttl -5"),
    (["enqueue", "x", "1", "--max-concurrency", "0", "--concurrency-key", "k"], "invalid --max-concurrency 0"),
    (["enqueue", "x", "1", "--priority", "12"], "invalid --priority 12"),
    (["enqueue", "x", "1", "--eta", "nan"], "'--eta': 'nan' is not a finite number"),
    (["enqueue", "x", "1", "--delay", "inf"], "'--delay': 'inf' is not a finite number"),
    (["dlq", "replay", "default", "--priority", "11"], "invalid --priority 11"),
    (["queue", "retention", "default", "--keep", "0"], "invalid --keep 0"),
    (["queue", "retention", "default", "--keep-dead", "-1"], "invalid --keep-dead -1"),
    (["queue", "retention", "default", "--max-age", "-1"], "invalid --max-age -1"),
    (["run", "apps.basic:app", "--burst", "--queues", ""], "Invalid value for --queues"),
    (["run", "apps.basic:app", "--burst", "--queues", "a:0"], "Invalid value for --queues"),
    (["run", "apps.basic:app", "--burst", "--level-weights", "1,2"], "Invalid value for --level-weights"),
    (["run", "apps.basic:app", "--burst", "--connect-timeout", "0"], "--connect-timeout"),
]


@pytest.fixture
def in_tests_dir(monkeypatch):
    monkeypatch.chdir(os.path.dirname(os.path.abspath(__file__)))  # `xq run apps.basic:app` imports from here


@pytest.mark.parametrize("args,flag", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_a_usage_error_exits_2_naming_the_flag(redis_url, in_tests_dir, args, flag):
    res = CliRunner().invoke(main, [*args, "--redis", redis_url])
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    assert flag in res.output, res.output
    for name in PYTHON_NAMES:
        assert name not in res.output.replace("@app.task(rate_limit=", ""), res.output


def test_xq_events_until_done_without_id_exits_2_naming_the_flag_subprocess(redis_url):
    p = subprocess.run([sys.executable, "-m", "xq", "events", "default", "--until-done", "--redis", redis_url],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert "--until-done needs --id" in p.stderr and "ids=" not in p.stderr, p.stderr
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
