"""App routing: task names to default queues and options (no Redis: pure App logic)."""

from __future__ import annotations

import pytest

import xq


def test_route_for_first_match_wins_and_unrouted_names_go_to_the_default_queue():
    app = xq.App(routes={"report.*": {"queue": "reports"}})
    app.route("image.*", queue="images", priority="high", max_retries=5, timeout=30, expires=600)
    app.route("image.huge", queue="never")  # added later: image.* matches first
    app.route("exact.name", queue="exact")
    assert app.route_for("report.daily") == {"queue": "reports"}
    assert app.route_for("image.huge") == {"queue": "images", "priority": 2, "max_retries": 5, "timeout": 30.0,
                                           "expires": 600.0}
    assert app.route_for("exact.name") == {"queue": "exact"}
    assert app.route_for("exact.name.more") == {"queue": "default"}
    assert app.route_for("nothing") == {"queue": "default"}
    assert xq.App(default_queue="misc").route_for("x") == {"queue": "misc"}


def test_routes_as_a_list_of_pairs_keep_their_order():
    app = xq.App(routes=[("a.b", {"queue": "first"}), ("a.*", {"queue": "second"})])
    assert app.route_for("a.b")["queue"] == "first" and app.route_for("a.c")["queue"] == "second"


def test_a_registered_tasks_explicit_settings_win_over_routes():
    app = xq.App()
    app.route("image.*", queue="images", max_retries=5, timeout=30)

    @app.task("image.thumb")                  # nothing explicit: the route decides
    def thumb(p): ...

    @app.task("image.big", queue="big", timeout=5)
    def big(p): ...

    class Probe(xq.Processor):
        name = "image.probe"
        queue = "video"

    app.register(Probe)
    assert app.route_for("image.thumb") == {"queue": "images", "max_retries": 5, "timeout": 30.0}
    assert app.route_for("image.big") == {"queue": "big", "max_retries": 5, "timeout": 5.0}
    assert app.route_for("image.probe") == {"queue": "video", "max_retries": 5, "timeout": 30.0}
    # a worker started without --queues serves the routed queues too
    assert app.queues() == ["default", "images", "big", "video"]


@pytest.mark.parametrize("pattern, options, match", [
    ("image.*", {"queue": "bad queue"}, r"queue of route 'image\.\*': invalid queue name 'bad queue'"),
    ("image.*", {"queu": "images"}, r"unknown route option 'queu' for 'image\.\*'"),
    ("image.*", {"priority": "urgent"}, r"priority of route 'image\.\*': invalid priority 'urgent'"),
    ("image.*", {"max_retries": -1}, r"max_retries of route 'image\.\*' must be an integer >= 0, got -1"),
    ("image.*", {"timeout": 0}, r"invalid timeout of route 'image\.\*' 0"),
    ("image.*", {"expires": "soon"}, r"invalid expires of route 'image\.\*' 'soon'"),
    ("", {"queue": "q"}, r"invalid route pattern ''"),
])
def test_bad_routes_are_config_errors_naming_the_value(pattern, options, match):
    with pytest.raises(xq.ConfigError, match=match):
        xq.App().route(pattern, **options)
    with pytest.raises(xq.ConfigError, match=match):
        xq.App(routes={pattern: options})


def test_malformed_routes_argument():
    with pytest.raises(xq.ConfigError, match="invalid route"):
        xq.App(routes=[("a.*", "images")])
