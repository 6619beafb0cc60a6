"""The child's error text: the same traceback Python prints, made without its per-exception costs."""

import traceback

from xq.child import _format_exception


def _raise_chain():
    try:
        {}["missing"]
    except KeyError as e:
        raise ValueError("bad input") from e


def _raise_during_handling():
    try:
        1 / 0
    except ZeroDivisionError:
        raise RuntimeError("while handling")


def test_format_exception_matches_the_standard_formatter_without_carets():
    for fn in (_raise_chain, _raise_during_handling):
        try:
            fn()
        except Exception as e:
            ours = "".join(_format_exception(e)).splitlines()
            theirs = [line for line in "".join(traceback.format_exception(e)).splitlines()
                      if line.strip() and set(line.strip()) - set("^~")]
            assert [line for line in ours if line.strip()] == theirs


def test_format_exception_without_traceback_or_message():
    assert _format_exception(KeyError()) == ["KeyError\n"]


class _CancelLandsLate(list):
    """A control block whose cancel word for `seq` reads 0 the first time and `seq` afterwards: the
    supervisor's cancel landing between the child's first look and the handler's start."""

    def __init__(self, seq: int):
        from xq.child import CANCEL_SLOTS, CTL_CANCEL, CTL_SIZE
        super().__init__([0] * (CTL_SIZE // 8))
        self.word, self.seq, self.reads = CTL_CANCEL + seq % CANCEL_SLOTS, seq, 0

    def __getitem__(self, i):
        if i == self.word:
            self.reads += 1
            return self.seq if self.reads > 1 else 0
        return super().__getitem__(i)


def test_a_cancel_that_lands_just_before_the_handler_starts_keeps_it_from_running():
    import xq
    from xq._impl import fast
    from xq.child import Runner

    app, calls = xq.App(), []

    @app.task("t")
    def t(payload):
        calls.append(payload)

    seq = 7
    runner = Runner(app, ["default"], _CancelLandsLate(seq))
    status = runner.run(fast.encode_task_head(seq, 1, b"j", 0, b"id", b"t"), b"1")[1]
    assert status == fast.ST_CANCELED and calls == []
