"""Built-in media processors: `xq run xq.media:app` serves them with no user code.

Images (Pillow, extra `images`): media.image.thumbnail, media.image.resize, media.image.convert,
media.image.chain.  Video (PyAV, extra `video`): media.video.probe, media.video.frames, media.video.poster,
media.video.transcode.  Payload and result schemas: docs/protocol.md, "Built-in media processors".

Bad media or bad options raise MediaError (an xq.NonRetryable): the task ends dead at once with the reason;
so does any other error of the payload's or the media's making (final_errors).  A file or disk error
(OSError) is retried, unless it is one no retry fixes (a missing directory, no permission).
Sources and destinations given as URLs go through hooks set with set_fetch / set_put in a module of yours
that imports this app (`from xq.media import app, set_fetch`) and is the one `xq run` loads.
"""

from __future__ import annotations

from ..app import App
from . import images, video
from .common import MediaError, final_errors, set_fetch, set_put

__all__ = ["app", "MediaError", "set_fetch", "set_put", "TASKS"]

app = App("xq.media")

TASKS = {
    "media.image.thumbnail": images.thumbnail,
    "media.image.resize": images.resize,
    "media.image.convert": images.convert,
    "media.image.chain": images.chain,
    "media.video.probe": video.probe,
    "media.video.frames": video.frames,
    "media.video.poster": video.poster,
    "media.video.transcode": video.transcode,
}
for _name, _fn in TASKS.items():
    app.register(final_errors(_name, _fn), name=_name)
