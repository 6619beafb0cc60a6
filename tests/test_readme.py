"""Every ```python and ```sh example of README.md runs, against a real redis-server and, where it needs
workers, a real `xq run` (issue 15): an example that stops working fails here.

An HTML comment on the line before a block names what it needs (the README's last section lists them):
    app=NAME file=F.py      the block is file F.py of app NAME (written where later blocks of NAME run)
    background=NAME         the block is an `xq run` line serving app NAME: it must come up and stop with 0
    setup=redis | worker:NAME | dead_letters | bulk | metrics | stats   what runs before the block
    output=next             the ```text block after it is its exact stdout
    skip=REASON             only `installs packages` and `ci-command ...` (see test_skips_are_only_allowed_kinds)
Also here: the CLI reference (docs/cli.md) is what `python3 -m xq.clidoc` prints, and every extra the README
installs exists in pyproject.toml.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from helpers import wait_until

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
README_URL = "redis://127.0.0.1:6379/0"
TWO_COMMANDS = ("python3 -m pip install -e '.[images]' && xq demo",
                "python3 -m pip install -e '.[dev]' && python3 -m pytest -q")
SETUPS = ("redis", "worker", "dead_letters", "bulk", "metrics", "stats")
MARKER = re.compile(r"^<!-- test: (.*) -->$")
TASK_ID = re.compile(r"\b[0-9A-HJKMNP-TV-Z]{26}\b")
WORKER_ID = re.compile(r"\bvm:\d+:[0-9a-f]{6}\b")
HEADER = re.compile(r"^[A-Z][A-Z0-9/_]*( +[A-Z][A-Z0-9/_]*)+$")
RC = "@@XQ-README-RC"


@dataclass
class Block:
    line: int                    # the line of the opening fence
    lang: str
    code: str
    marks: dict = field(default_factory=dict)
    output: str | None = None    # the ```text block after it, with output=next

    @property
    def id(self) -> str:
        return f"L{self.line}-{self.lang}"


def _marks(text: str) -> dict:
    text = text.strip()
    if text.startswith("skip="):
        return {"skip": text[len("skip="):].strip()}
    out = {}
    for tok in text.split():
        key, _, value = tok.partition("=")
        out[key] = value
    return out


def parse(text: str) -> list[Block]:
    lines = text.split("\n")
    blocks, i, last_end = [], 0, -1
    while i < len(lines):
        m = re.match(r"^```(\w*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        lang, start = m.group(1), i
        j = i + 1
        while j < len(lines) and lines[j] != "```":
            j += 1
        body = "\n".join(lines[start + 1:j]) + "\n"
        if lang in ("python", "sh"):
            prev = lines[start - 1] if start else ""
            mm = MARKER.match(prev)
            blocks.append(Block(start + 1, lang, body, _marks(mm.group(1)) if mm else {}))
            last_end = j
        elif lang == "text" and blocks and blocks[-1].marks.get("output") == "next" and blocks[-1].output is None:
            if all(not x.strip() for x in lines[last_end + 1:start]):  # right after the block, blank lines between
                blocks[-1].output = body
        i = j + 1
    return blocks


BLOCKS = parse(README.read_text())
APPS: dict[str, tuple[str, str]] = {b.marks["app"]: (b.marks["file"], b.code) for b in BLOCKS if "app" in b.marks}
RUNNABLE = [b for b in BLOCKS if "skip" not in b.marks]
# the README's own `xq run` line of each app: setup=worker:NAME starts that, so a run line that does not serve
# a queue the examples use (issue 15's first example) fails them
RUN_LINES = {b.marks["background"]: b.code.strip() for b in BLOCKS if "background" in b.marks}


# --- the checks that need no Redis ---

def test_every_example_says_what_it_needs():
    unmarked = [b.id for b in BLOCKS if not b.marks]
    assert not unmarked, f"README blocks without a <!-- test: ... --> line before them: {unmarked}"
    for b in BLOCKS:
        setup = b.marks.get("setup")
        if setup is not None:
            kind, _, app = setup.partition(":")
            assert kind in SETUPS, f"{b.id}: unknown setup {setup!r} (known: {SETUPS})"
            if kind == "worker":
                assert app in APPS or app == "xq.media", f"{b.id}: worker of unknown app {app!r}"
        if "background" in b.marks:
            assert b.marks["background"] in APPS or b.marks["background"] == "xq.media", b.id
        if "app" in b.marks:
            assert b.marks.get("file", "").endswith(".py"), f"{b.id}: app= needs file=NAME.py"
        if b.marks.get("output") == "next":
            assert b.output is not None, f"{b.id}: output=next but no ```text block follows"


def test_skips_are_only_allowed_kinds():
    """A skipped block is an install line (whose extras must exist) or one of the two commands CI runs."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for b in BLOCKS:
        reason = b.marks.get("skip")
        if reason is None:
            continue
        if reason == "installs packages":
            lines = [x for x in b.code.splitlines() if x.strip() and not x.startswith("#")]
            assert lines and all(re.match(r"^python3 -m pip install -e '?\.(\[[\w,]+\])?'?$", x) for x in lines), \
                f"{b.id}: skipped as an install, but it is not only `python3 -m pip install -e .[extras]`: {lines}"
        elif reason.startswith("ci-command"):
            assert b.code.strip() in TWO_COMMANDS, f"{b.id}: skipped as a CI command but is {b.code.strip()!r}"
        else:
            pytest.fail(f"{b.id}: skip reason {reason!r} is not an allowed kind (installs packages, ci-command)")
    text = README.read_text()
    for names in re.findall(r"pip install (?:-e )?'(?:\.|xq-queue)\[([\w,]+)\]'", text):
        for name in names.split(","):
            assert name in extras, f"README installs extra {name!r}, which pyproject.toml does not define"
    assert "pip install 'xq[" not in text, "`pip install 'xq[...]'` installs an unrelated package: use the clone"
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["name"] in text


def test_the_readme_keeps_the_two_commands_ci_runs():
    text = README.read_text()
    for cmd in TWO_COMMANDS:
        assert f"```sh\n{cmd}\n```" in text
    ci = (ROOT / ".ci" / "run").read_text()
    assert TWO_COMMANDS[1] in ci, ".ci/run no longer runs the README's test command"


def test_cli_reference_is_current():
    from xq.clidoc import render

    committed = (ROOT / "docs" / "cli.md").read_text()
    assert committed == render(), "docs/cli.md differs from the click definitions: python3 -m xq.clidoc > docs/cli.md"


def test_cli_reference_names_every_command_and_option():
    from xq.cli import main

    doc = (ROOT / "docs" / "cli.md").read_text()

    def walk(cmd, path):
        for p in cmd.params:
            for opt in getattr(p, "opts", []):
                if opt.startswith("-"):
                    assert f"`{opt}`" in doc, f"{path} {opt} missing from docs/cli.md"
        for name, sub in getattr(cmd, "commands", {}).items():
            assert f"### {path} {name}\n" in doc, f"{path} {name} missing from docs/cli.md"
            walk(sub, f"{path} {name}")

    walk(main, "xq")


# --- running the examples ---

class Env:
    """A temporary directory, a PATH whose `xq` is this tree's, the test's Redis, the workers started."""

    def __init__(self, tmp: Path, url: str):
        self.tmp, self.url = tmp, url
        self.data = tmp / "data"
        self.data.mkdir()
        shim = tmp / ".bin"
        shim.mkdir()
        (shim / "xq").write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m xq \"$@\"\n")
        (shim / "xq").chmod(0o755)
        (shim / "python3").symlink_to(sys.executable)
        self.env = {**os.environ, "XQ_REDIS_URL": url, "PATH": f"{shim}:{os.environ['PATH']}",
                    "PYTHONPATH": os.pathsep.join([str(tmp), str(ROOT), os.environ.get("PYTHONPATH", "")]),
                    "XQ_RETRY_FOR": "10", "PYTHONUNBUFFERED": "1"}
        self.procs: list[subprocess.Popen] = []
        self.ids: list[str] = []
        self.worker_ids: list[str] = []
        self.subs = {README_URL: url, "/data/": f"{self.data}/"}

    def sub(self, text: str) -> str:
        for a, b in self.subs.items():
            text = text.replace(a, b)
        return text

    def write_app(self, name: str) -> str:
        """Writes app NAME's file; its module name."""
        if name == "xq.media":
            return "xq.media"
        fname, code = APPS[name]
        (self.tmp / fname).write_text(self.sub(code))
        return fname[:-3]

    def start(self, cmd: str, name: str) -> subprocess.Popen:
        with open(self.tmp / f"worker-{len(self.procs)}.log", "w") as log:
            p = subprocess.Popen(["bash", "-c", "exec " + self.sub(cmd)], cwd=self.tmp, env=self.env, stdout=log,
                                 stderr=subprocess.STDOUT)
        self.procs.append(p)
        from xq.inspect import Inspector

        with Inspector(self.url) as i:
            def up():
                assert p.poll() is None, f"{cmd!r} exited with {p.returncode}:\n{self.log(p)}"
                return [w["id"] for w in i.workers() if w["pid"] == p.pid]
            self.worker_ids += wait_until(up, 60, 0.1, what=f"worker {name} in the registry")
        return p

    def log(self, p: subprocess.Popen) -> str:
        return (self.tmp / f"worker-{self.procs.index(p)}.log").read_text()[-3000:]

    def stop(self, p: subprocess.Popen) -> int:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
        try:
            return p.wait(timeout=40)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            raise AssertionError(f"the worker did not stop within 40 s of SIGTERM:\n{self.log(p)}") from None

    def close(self) -> None:
        for p in self.procs:
            with contextlib.suppress(Exception):
                self.stop(p)

    def run(self, args, timeout=120) -> subprocess.CompletedProcess:
        return subprocess.run(args, cwd=self.tmp, env=self.env, capture_output=True, text=True, timeout=timeout)


def _jpeg(color: str, size=(640, 480)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG")
    return buf.getvalue()


def setup(env: Env, spec: str) -> None:
    import xq

    kind, _, app = spec.partition(":")
    if kind == "redis":
        return
    if kind == "worker":
        module = env.write_app(app)
        if app == "xq.media":
            (env.tmp / "photo.jpg").write_bytes(_jpeg("orange"))
            (env.data / "in.jpg").write_bytes(_jpeg("navy", (1200, 900)))
            from test_media import make_video

            make_video(str(env.data / "in.mov"), seconds=1.0)
        env.start(RUN_LINES.get(app, f"xq run {module}:app --procs 2"), app)
        return
    p = xq.Producer(env.url)
    try:
        if kind == "dead_letters":
            (env.tmp / "deadapp.py").write_text(
                "import xq\n\napp = xq.App()\n\n\n@app.task('boom', max_retries=1, backoff=[0.1])\n"
                "def boom(payload):\n    raise ValueError(f'boom {payload}')\n")
            env.ids = [p.enqueue("boom", 1), p.enqueue("boom", 2)]
            out = env.run(["xq", "run", "deadapp:app", "--procs", "1", "--burst"], timeout=60)
            assert out.returncode == 0, out.stdout + out.stderr
            assert [p.status(t)["status"] for t in env.ids] == ["dead", "dead"]
            env.ids.append(p.enqueue("boom", 3, delay=3600))
        elif kind == "stats":
            (env.tmp / "statsapp.py").write_text(
                "import xq\n\napp = xq.App()\n\n\n@app.task('flaky', max_retries=1, backoff=[0.1])\n"
                "def flaky(n):\n    if n % 3 == 0 and xq.current().attempt == 1:\n        raise ValueError(n)\n"
                "    return n\n\n\n@app.task('ok')\ndef ok(n):\n    return n\n")
            p.enqueue_many("flaky", list(range(12)))
            p.enqueue_many("ok", list(range(5)))
            out = env.run(["xq", "run", "statsapp:app", "--procs", "1", "--burst"], timeout=60)
            assert out.returncode == 0, out.stdout + out.stderr
            # flaky fails only where attempt == 1: with a 1-based attempt (as the README says) every retry succeeds
            assert p.dead_count("default") == 0, "xq.current().attempt is not 1 on the first run"
        elif kind == "bulk":
            env.ids = p.enqueue_many("send", [{"n": i} for i in range(100)], queue="emails")
            p.enqueue_many("send", [{"n": i} for i in range(50)], queue="emails", delay=3600)
        elif kind == "metrics":
            from helpers import free_port

            port = free_port()
            env.subs["localhost:9100"] = f"localhost:{port}"
            module = env.write_app("quickstart")
            env.start(f"xq run {module}:app --procs 2 --metrics-port {port}", "quickstart")
            ids = [p.enqueue("hello", {"name": str(i)}) for i in range(3)]
            for t in ids:
                p.result(t, timeout=30)
        else:
            raise AssertionError(f"unknown setup {spec!r}")
    finally:
        p.close()


def transcript(code: str) -> list[tuple[str, list[str]]]:
    """[(command, the output lines shown after it)] of a block of `$ command` lines."""
    steps: list[tuple[str, list[str]]] = []
    for line in code.rstrip("\n").split("\n"):
        if line.startswith("$ "):
            steps.append((line[2:], []))
        elif steps:
            steps[-1][1].append(line)
    return steps


def run_transcript(env: Env, b: Block) -> None:
    steps = transcript(b.code)
    mapping: dict[str, str] = {}
    for cmd, _ in steps:
        for tid in TASK_ID.findall(cmd):
            if tid not in mapping and len(mapping) < len(env.ids):
                mapping[tid] = env.ids[len(mapping)]
    script = []
    for cmd, _ in steps:
        cmd = env.sub(cmd)
        for a, c in mapping.items():
            cmd = cmd.replace(a, c)
        if env.worker_ids:
            cmd = WORKER_ID.sub(env.worker_ids[0], cmd)
        script.append(f"{{ {cmd}\n}} < yes.txt 2>&1; echo \"{RC} $?\"")
    (env.tmp / "yes.txt").write_text("y\n" * 100)
    out = subprocess.run(["bash", "-c", "\n".join(script)], cwd=env.tmp, env=env.env, stdin=subprocess.DEVNULL,
                         capture_output=True, text=True, timeout=120)
    parts = re.split(rf"{RC} (\d+)\n", out.stdout)
    got = [(parts[k], int(parts[k + 1])) for k in range(0, len(parts) - 1, 2)]
    assert len(got) == len(steps), f"{b.id}: ran {len(got)} of {len(steps)} commands:\n{out.stdout}{out.stderr}"
    for (cmd, shown), (text, rc) in zip(steps, got):
        first = shown[0] if shown else ""
        where = f"README line {b.line}: `{cmd}` exited {rc}:\n{text[-3000:]}"
        if first.startswith(("xq:", "Error:")):
            assert rc != 0, "expected a failure, as shown; " + where
        else:
            assert rc == 0, where
            if HEADER.match(first):
                actual = text.split("\n", 1)[0]
                assert actual.split() == first.split(), f"table header changed; {where}"


@pytest.mark.parametrize("b", RUNNABLE, ids=[b.id for b in RUNNABLE])
def test_readme_block(b: Block, redis_url, tmp_path):
    env = Env(tmp_path, redis_url)
    try:
        if "app" in b.marks:
            module = env.write_app(b.marks["app"])
            out = env.run([sys.executable, "-c", f"import xq, {module} as m; assert isinstance(m.app, xq.App)"])
            assert out.returncode == 0, f"README line {b.line}: {b.marks['file']} does not import:\n{out.stderr}"
            return
        if "background" in b.marks:
            name = b.marks["background"]
            env.write_app(name)
            cmd = b.code.strip()
            assert "\n" not in cmd and cmd.startswith("xq run "), f"{b.id}: a background block is one `xq run` line"
            p = env.start(cmd, name)
            rc = env.stop(p)
            assert rc == 0, f"README line {b.line}: `{cmd}` exited {rc} on SIGTERM:\n{env.log(p)}"
            return
        setup(env, b.marks.get("setup", "redis"))
        if b.lang == "python":
            (tmp_path / f"block_{b.line}.py").write_text(env.sub(b.code))
            out = env.run([sys.executable, f"block_{b.line}.py"])
            print(out.stdout)  # shown with -s: compare with the README's comments
            assert out.returncode == 0, f"README line {b.line} failed:\n{out.stdout}\n{out.stderr}"
            if b.output is not None:
                assert out.stdout == b.output, f"README line {b.line}: printed {out.stdout!r}, README shows {b.output!r}"
        elif any(x.startswith("$ ") for x in b.code.splitlines()):
            run_transcript(env, b)
        else:
            out = env.run(["bash", "-ec", env.sub(b.code)])
            assert out.returncode == 0, f"README line {b.line} failed:\n{out.stdout}\n{out.stderr}"
    finally:
        env.close()


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation but - and _ dropped, spaces to -."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("doc", ["README.md", "docs/benchmarks.md", "docs/cli.md"])
def test_links_resolve(doc):
    """Every #anchor names a heading (or an <a id>) and every relative link an existing file (and heading)."""
    src = ROOT / doc

    def anchors_of(f: Path) -> set:
        text = f.read_text()
        body = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
        return {_slug(h) for h in re.findall(r"^#+ (.+)$", body, flags=re.M)} | set(re.findall(r'<a id="([^"]+)"', text))

    body = re.sub(r"^```.*?^```", "", src.read_text(), flags=re.S | re.M)
    links = re.findall(r"\]\(([^)\s]+)\)", body)
    for target in links:
        if target.startswith(("http://", "https://")):
            continue
        path, _, anchor = target.partition("#")
        f = (src.parent / path) if path else src
        assert f.exists(), f"{doc} links {path}, which does not exist"
        if anchor and f.suffix == ".md":
            assert anchor in anchors_of(f), f"{doc} links {target}: {f.name} has no heading #{anchor}"


def test_the_readmes_command_list_names_every_command():
    from xq.cli import main

    text = README.read_text()
    section = text[text.index("## Command line reference"):]
    section = section[:section.index("\n## ", 1)]
    for name, cmd in main.commands.items():
        assert f"`{name}`" in section or f"`{name} " in section, \
            f"the README's command line reference does not name `xq {name}`"
        for sub in getattr(cmd, "commands", {}):
            assert re.search(rf"`{name} [\w|]*\b{sub}\b", section), f"it does not name `xq {name} {sub}`"
