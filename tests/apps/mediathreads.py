"""xq.media's app plus one task reporting the codec threads a child chose (tests/test_media.py)."""

from xq.media import app, video

app.register(lambda _payload: video.threads(), name="test.media.threads")
