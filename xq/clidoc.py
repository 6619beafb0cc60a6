"""Print the CLI reference (docs/cli.md) from the click definitions of xq/cli.py.

    python3 -m xq.clidoc > docs/cli.md

Every command and group, in the order `xq --help` lists them, with its usage line, its whole help text and
every argument and option (flags, type, default, help). The output depends on nothing but the click
definitions (no terminal width, no environment), so tests/test_readme.py can compare it with the committed
docs/cli.md and fail when a command changes without its reference.
"""

from __future__ import annotations

import inspect
import sys

import click

HEADER = """# xq command line reference

Generated from the click definitions in `xq/cli.py` by `python3 -m xq.clidoc > docs/cli.md`; do not edit by
hand (`tests/test_readme.py::test_cli_reference_is_current` fails when this file and the code disagree).
Exit codes: [below](#exit-codes). Every command that talks to Redis takes `--redis URL` (default:
`$XQ_REDIS_URL`, then `redis://127.0.0.1:6379/0`).
"""


def _anchor(path: str) -> str:
    return path.replace(" ", "-")


def _walk(cmd: click.Command, path: str, ctx: click.Context):
    yield path, cmd, ctx
    if isinstance(cmd, click.Group):
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            if sub is None or sub.hidden:
                continue
            yield from _walk(sub, f"{path} {name}", click.Context(sub, info_name=name, parent=ctx))


def _usage(cmd: click.Command, path: str, ctx: click.Context) -> str:
    return f"{path} {' '.join(cmd.collect_usage_pieces(ctx))}".rstrip()


def _type(param: click.Parameter) -> str:
    t = param.type
    if isinstance(param, click.Option) and param.is_flag:
        return "flag"
    if isinstance(t, click.Choice):
        return " | ".join(str(c) for c in t.choices)
    if isinstance(t, (click.IntRange, click.FloatRange)):
        kind = "integer" if isinstance(t, click.IntRange) else "float"
        return f"{kind}, {t._describe_range()}" if hasattr(t, "_describe_range") else kind
    return t.name + (", repeatable" if getattr(param, "multiple", False) else "")


def _default(param: click.Parameter) -> str:
    if isinstance(param, click.Option) and param.is_flag and not param.secondary_opts:
        return ""
    d = param.default
    unset = getattr(click.core, "UNSET", None)  # click >= 8.2's "no default" marker
    if (d is None or (unset is not None and d is unset) or callable(d) or d == () or d == []
            or isinstance(param, click.Argument)):
        return ""
    if isinstance(d, bool):
        return ("`" + (param.opts[0] if d else param.secondary_opts[0]) + "`") if param.secondary_opts else str(d)
    return f"`{d}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _params(cmd: click.Command, ctx: click.Context) -> list[str]:
    rows = []
    for p in cmd.get_params(ctx):
        if isinstance(p, click.Option) and (p.hidden or (p.name == "help" and ctx.parent is not None)):
            continue  # --help: every command has it
        if isinstance(p, click.Argument):
            name = f"`{p.metavar or p.name.upper()}`"
            if p.nargs == -1:
                name += " ..."
            what = "argument" + ("" if p.required else " (optional)")
            help_ = ""
        else:
            flags = p.opts + p.secondary_opts
            name = " / ".join(f"`{f}`" for f in flags)
            what = _type(p)
            help_ = p.help or ""
        rows.append(f"| {name} | {_cell(what)} | {_default(p)} | {_cell(help_)} |")
    if not rows:
        return []
    return ["| argument / option | type | default | what |", "|---|---|---|---|", *rows, ""]


def render(root: click.Command | None = None) -> str:
    if root is None:
        from .cli import main as root
    out = [HEADER]
    entries = list(_walk(root, "xq", click.Context(root, info_name="xq")))
    out.append("Commands: " + ", ".join(f"[`{p}`](#{_anchor(p)})" for p, _, _ in entries[1:]) + ".\n")
    for path, cmd, ctx in entries:
        out.append(f"## {path}\n" if path == "xq" else f"### {path}\n")  # GitHub's anchor: #xq-dlq-ls
        out.append("```text\n" + _usage(cmd, path, ctx) + "\n```\n")
        doc = inspect.cleandoc(cmd.help or "")
        if doc:
            out.append(doc.replace("\b\n", "") + "\n")
        if isinstance(cmd, click.Group):
            subs = [n for n in cmd.list_commands(ctx) if not cmd.get_command(ctx, n).hidden]
            out.append("Subcommands: " + ", ".join(f"[`{n}`](#{_anchor(path + ' ' + n)})" for n in subs) + ".\n")
        out.extend(_params(cmd, ctx))
    out.append(_exit_codes())
    return "\n".join(out).rstrip() + "\n"


def _exit_codes() -> str:
    """The exit-code table of xq/cli.py's module docstring, verbatim."""
    from . import cli

    doc = inspect.cleandoc(cli.__doc__ or "")
    _, _, codes = doc.partition("Exit codes")
    return "## Exit codes\n\n```text\nExit codes" + codes.rstrip() + "\n```\n"


if __name__ == "__main__":
    sys.stdout.write(render())
