"""No silent misconfiguration: unknown task, route, cron and App options, misspelled Processor attributes
and methods, and a misspelled XQ_* environment variable are ConfigErrors naming the key and the one meant."""

from __future__ import annotations

import asyncio
import pytest
from click.testing import CliRunner

import xq
from xq.cli import check_env, main


def handler(payload):
    return payload


@pytest.mark.parametrize("opts,match", [
    ({"max_retry": 3}, r"unknown task option 'max_retry': did you mean 'max_retries'\?"),
    ({"retries": 3}, r"unknown task option 'retries': did you mean 'max_retries'\?"),
    ({"timeout_s": 3}, r"unknown task option 'timeout_s': did you mean 'timeout'\?"),
    ({"ttl": 60}, r"unknown task option 'ttl': did you mean 'result_ttl'\?"),
    ({"priority": 1}, r"unknown task option 'priority': priority is set per enqueue"),
])
def test_unknown_task_options_are_refused_with_the_close_match(opts, match):
    app = xq.App()
    with pytest.raises(xq.ConfigError, match=match):
        app.task("t", **opts)(handler)
    with pytest.raises(xq.ConfigError, match=match):
        app.register(handler, name="t", **opts)
    assert app.tasks == {}


def test_unknown_route_option_suggests_the_close_match():
    with pytest.raises(xq.ConfigError, match=r"unknown route option 'queu' for 'image\.\*': did you mean 'queue'\?"):
        xq.App().route("image.*", queu="images")
    with pytest.raises(xq.ConfigError, match=r"'max_retry' for 'a': did you mean 'max_retries'\?"):
        xq.App(routes={"a": {"max_retry": 2}})


def test_unknown_cron_options_are_refused():
    app = xq.App()
    with pytest.raises(xq.ConfigError, match=r"unknown @app.cron option 'max_retry': did you mean 'max_retries'\?"):
        app.cron("* * * * *", max_retry=1)(lambda: None)
    with pytest.raises(xq.ConfigError, match=r"unknown @app.cron option 'prio': did you mean 'priority'\?"):
        app.cron("* * * * *", prio=1)(lambda: None)
    app.cron("* * * * *", name="tick", timeout=5)(lambda: None)
    assert app.tasks["tick"].timeout == 5.0


def test_unknown_app_options_are_refused():
    with pytest.raises(xq.ConfigError, match=r"unknown xq.App option 'middlewares': did you mean 'middleware'\?"):
        xq.App(middlewares=[])
    with pytest.raises(xq.ConfigError, match=r"unknown xq.App option 'default_queues'"):
        xq.App(default_queues="x")


@pytest.mark.parametrize("attrs,match", [
    ({"max_retry": 3}, r"sets max_retry = 3, which xq does not read: did you mean max_retries\?"),
    ({"retries": 3}, r"sets retries = 3.*did you mean max_retries\?"),
    ({"queues": "a"}, r"sets queues = 'a'.*did you mean queue\?"),
    ({"time_out": 3}, r"sets time_out = 3.*did you mean timeout\?"),
    ({"rate": "5/s"}, r"sets rate = '5/s'.*did you mean rate_limit\?"),
    ({"priority": 1}, r"sets priority = 1, which xq does not read: priority is set per enqueue"),
    ({"set_up": lambda self: None}, r"defines set_up\(\), which xq never calls: did you mean setup\(\)\?"),
    ({"proccess": lambda self, p: p}, r"defines proccess\(\).*did you mean process\(\)\?"),
])
def test_misspelled_processor_attributes_are_refused(attrs, match):
    cls = type("Resize", (xq.Processor,), {"name": "resize", "process": lambda self, p: p, **attrs})
    app = xq.App()
    with pytest.raises(xq.ConfigError, match=r"processor Resize " + match):
        app.register(cls)
    with pytest.raises(xq.ConfigError, match=match):
        app.task(cls)
    assert app.tasks == {}


def test_unrelated_and_private_processor_attributes_pass():
    class Resize(xq.Processor):
        name = "resize"
        queue = "images"
        max_retries = 5
        timeout = 10
        model_path = "/models/resize.onnx"
        sizes = (64, 128)
        _cache = None

        def setup(self):
            self._model = object()

        def helper(self):
            return 1

        def process(self, payload):
            return payload

    app = xq.App()
    app.register(Resize)
    app.register(Resize(), name="resize2")
    assert app.tasks["resize"].max_retries == 5 and app.tasks["resize2"].queue == "images"


def test_a_misspelled_xq_environment_variable_is_a_usage_error(redis_url):
    with pytest.raises(xq.ConfigError, match="XQ_REDIS_ULR is not one xq reads: did you mean XQ_REDIS_URL"):
        check_env({"XQ_REDIS_ULR": "redis://elsewhere"})
    check_env({"XQ_TEST_REDIS": "x", "XQ_MYAPP_MODE": "1", "XQ_REDIS_URL": "x"})  # a project's own pass
    res = CliRunner().invoke(main, ["queues", "--redis", redis_url], env={"XQ_RETRY_FRO": "5"})
    assert res.exit_code == 2 and "did you mean XQ_RETRY_FOR" in res.output, res.output


@pytest.mark.parametrize("key, meant", [("max_retry", "max_retries"), ("retries", "max_retries"),
                                        ("time_out", "timeout"), ("unique", "unique_key")])
def test_a_misspelled_enqueue_option_names_the_option_meant(key, meant):
    from xq.aio import AsyncProducer

    p = xq.Producer("redis://127.0.0.1:1/0")  # refused before any I/O
    with pytest.raises(xq.ConfigError, match=f"unknown enqueue option '{key}': did you mean '{meant}'"):
        p.enqueue("echo", 1, **{key: 3})
    with pytest.raises(xq.ConfigError, match=f"unknown enqueue option '{key}': did you mean '{meant}'"):
        p.enqueue_many("echo", [1], **{key: 3})
    ap = AsyncProducer("redis://127.0.0.1:1/0")
    with pytest.raises(xq.ConfigError, match=f"unknown enqueue option '{key}': did you mean '{meant}'"):
        asyncio.run(ap.enqueue("echo", 1, **{key: 3}))
