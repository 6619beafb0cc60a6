"""xq.media: the built-in image (Pillow) and video (PyAV) processors.  Media is generated here; the end-to-end
cases run the real `xq run xq.media:app` on a real redis-server, the rest call the processing functions."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import zlib
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image, ImageCms, features

import xq
from xq import context
from xq.media import MediaError, app, images, set_fetch, set_put, video
from xqrun import XQRun, wait_for

ORIENTATION, MAKE = 0x0112, 0x010F


# ---------------------------------------------------------------------------------------------- media makers
def jpeg(size=(400, 200), orientation: int | None = None, icc: bool = False, quality: int = 90) -> bytes:
    """A JPEG whose left half is red and right half blue, with EXIF (Make, optional Orientation)."""
    im = Image.new("RGB", size, (220, 0, 0))
    im.paste((0, 0, 220), (size[0] // 2, 0, size[0], size[1]))
    exif = Image.Exif()
    exif[MAKE] = "xq-test"
    if orientation is not None:
        exif[ORIENTATION] = orientation
    extra = {"icc_profile": ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()} if icc else {}
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality, exif=exif.tobytes(), **extra)
    return buf.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height: a decompression bomb that costs nothing to make."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = 8 + 8  # signature, then the IHDR chunk's length and type
    data[ihdr:ihdr + 8] = struct.pack(">II", width, height)
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(data[ihdr - 4:ihdr + 13])))
    return bytes(data)


def make_video(path: str, seconds: float = 2.0, fps: int = 25, size=(320, 240), audio: bool = False,
               preset: str = "ultrafast") -> str:
    """An H.264 MP4 of moving bars (a testsrc-like pattern), optionally with a 440 Hz AAC tone."""
    w, h = size
    with av.open(path, "w") as c:
        vs = c.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        vs.codec_context.options = {"preset": preset}
        aus = c.add_stream("aac", rate=44100) if audio else None
        xs = np.arange(w)
        for i in range(int(seconds * fps)):
            arr = np.empty((h, w, 3), np.uint8)
            arr[:, :, 0] = ((xs + 4 * i) % 256)[None, :]
            arr[:, :, 1] = (np.arange(h) * 255 // h)[:, None]
            arr[:, :, 2] = (i * 255) // int(seconds * fps)
            c.mux(vs.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")))
        if aus is not None:
            n = 1024
            for k in range(int(seconds * 44100) // n):
                t = (np.arange(n) + k * n) / 44100
                f = av.AudioFrame.from_ndarray((0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None, :],
                                               format="fltp", layout="mono")
                f.sample_rate, f.pts = 44100, k * n
                c.mux(aus.encode(f))
            c.mux(aus.encode(None))
        c.mux(vs.encode(None))
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> str:
    """2 s, 25 fps, 320x240, with audio."""
    return make_video(str(tmp_path_factory.mktemp("media") / "clip.mp4"), audio=True)


def opened(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def left_is_red(im: Image.Image) -> bool:
    r, g, b = im.convert("RGB").getpixel((2, im.height // 2))
    return r > 150 and b < 80


# ---------------------------------------------------------------------------------------------- images
def test_app_registers_the_stable_task_names():
    assert set(app.tasks) == {"media.image.thumbnail", "media.image.resize", "media.image.convert",
                              "media.image.chain", "media.video.probe", "media.video.frames",
                              "media.video.poster", "media.video.transcode"}
    assert all(s.queue == "default" for s in app.tasks.values())


def test_thumbnail_of_raw_bytes_auto_orients_and_strips_metadata():
    # orientation 6: stored 400x200, shown rotated 90 degrees clockwise (200x400, red on top)
    im = opened(images.thumbnail(jpeg(orientation=6)))
    assert (im.format, im.size) == ("JPEG", (128, 256))
    assert len(im.getexif()) == 0 and "icc_profile" not in im.info
    r, g, b = im.getpixel((im.width // 2, 4))
    assert r > 150 and b < 80  # the red half, once at the left, is at the top


def test_thumbnail_options_line_keeps_metadata_without_the_orientation():
    payload = b'{"size": [64, 64], "format": "webp", "metadata": "keep", "quality": 70}\n' + \
        jpeg(orientation=8, icc=True)
    im = opened(images.thumbnail(payload))
    assert (im.format, im.size) == ("WEBP", (32, 64))
    exif = im.getexif()
    assert exif.get(MAKE) == "xq-test" and ORIENTATION not in exif
    assert im.info.get("icc_profile")


def test_thumbnail_without_orient_keeps_the_stored_layout():
    im = opened(images.thumbnail(b'{"orient": false}\n' + jpeg(orientation=6)))
    assert im.size == (256, 128) and left_is_red(im)


def test_thumbnail_never_enlarges():
    assert opened(images.thumbnail(jpeg(size=(40, 30)))).size == (40, 30)


@pytest.mark.parametrize("mode, box, expected", [
    ("fit", (100, 100), (100, 50)),
    ("fit", (None, 100), (200, 100)),
    ("fit", (800, 800), (800, 400)),   # fit enlarges, unlike thumbnail
    ("fill", (100, 100), (100, 100)),
    ("exact", (120, 30), (120, 30)),
])
def test_resize_modes(tmp_path, mode, box, expected):
    src = tmp_path / "in.jpg"
    src.write_bytes(jpeg())
    payload = {"src": {"path": str(src)}, "mode": mode, "format": "png"}
    payload.update({k: v for k, v in zip(("width", "height"), box) if v is not None})
    im = opened(images.resize(payload))
    assert (im.format, im.size) == ("PNG", expected)
    if mode == "fill":  # cropped to the centre: both halves remain
        assert left_is_red(im) and im.getpixel((im.width - 2, im.height // 2))[2] > 150


@pytest.mark.parametrize("fmt", [f for f in ("jpeg", "png", "webp", "avif") if f != "avif" or features.check("avif")])
def test_convert_to_each_format_the_build_has(fmt):
    im = opened(images.convert(b'{"format": "%s"}\n' % fmt.encode() + jpeg()))
    assert im.format == fmt.upper() and im.size == (400, 200) and left_is_red(im)


def test_convert_quality_changes_the_output():
    noisy = Image.effect_noise((300, 300), 60).convert("RGB")
    buf = io.BytesIO()
    noisy.save(buf, "PNG")
    low = images.convert(b'{"format": "jpeg", "quality": 20}\n' + buf.getvalue())
    high = images.convert(b'{"format": "jpeg", "quality": 95}\n' + buf.getvalue())
    assert len(low) < len(high) / 2


def test_chain_runs_every_step_and_writes_its_dest(tmp_path):
    src = tmp_path / "in.jpg"
    src.write_bytes(jpeg(size=(1000, 500), orientation=3))  # upside down: red ends on the right
    dest = tmp_path / "out.webp"
    res = images.chain({"src": {"path": str(src)}, "dest": {"path": str(dest)},
                        "steps": [{"op": "resize", "width": 300, "height": 300, "mode": "fill"},
                                  {"op": "thumbnail", "size": [100, 100]},
                                  {"op": "convert", "format": "webp", "quality": 80}]})
    assert res == {"dest": str(dest), "width": 100, "height": 100, "format": "WEBP", "bytes": dest.stat().st_size}
    im = opened(dest.read_bytes())
    assert im.format == "WEBP" and not left_is_red(im)
    assert sorted(os.listdir(tmp_path)) == ["in.jpg", "out.webp"]  # no partial file left


def test_url_source_and_dest_go_through_the_hooks():
    store = {"s3://b/in.jpg": jpeg()}
    with pytest.raises(MediaError, match="no fetch hook"):
        images.thumbnail({"src": {"url": "s3://b/in.jpg"}})
    set_fetch(store.__getitem__)
    set_put(lambda url, data, ctype: store.__setitem__(url, (data, ctype)))
    try:
        res = images.thumbnail({"src": {"url": "s3://b/in.jpg"}, "size": [50, 50], "dest": {"url": "s3://b/t.png"},
                                "format": "png"})
    finally:
        set_fetch(None)
        set_put(None)
    data, ctype = store["s3://b/t.png"]
    assert res == {"dest": "s3://b/t.png", "width": 50, "height": 25, "format": "PNG", "bytes": len(data)}
    assert ctype == "image/png" and opened(data).size == (50, 25)


@pytest.mark.parametrize("payload, reason", [
    (b"this is not an image at all", "not an image"),
    (jpeg()[:600], "cannot decode the (JPEG )?image"),
    (jpeg()[:-300], "cannot decode the JPEG image"),
    (png_claiming(30000, 30000), "decompression bomb"),
    (b'{"max_pixels": 10000}\n' + jpeg(), "400x200 = 80000 pixels is over the limit of 10000"),
    (b'{"size": [10, 10], "colour": 1}\n' + jpeg(), "unknown option 'colour'"),
    (b'{"size": [10]}\n' + jpeg(), "invalid size"),
    (b'{"format": "gif"}\n' + jpeg(), "invalid format 'gif'"),
    (b'{"size": [10, 10]}' + jpeg(), "not JSON .* one-line JSON object, a newline, then the media"),
    (b'{"size": [10, 10]}', "no newline found"),
], ids=["not-image", "truncated-header", "truncated-data", "bomb", "max-pixels", "unknown-option", "bad-size",
        "bad-format", "options-run-into-image", "no-options-newline"])
def test_bad_images_raise_a_non_retryable_error_naming_the_problem(payload, reason):
    with pytest.raises(MediaError, match=reason) as ei:
        images.thumbnail(payload)
    assert isinstance(ei.value, xq.NonRetryable)


def test_bad_options_of_the_json_tasks():
    for fn, payload, reason in [
        (images.resize, {"src": {"path": "/nonexistent.jpg"}, "width": 10}, "does not exist"),
        (images.resize, {"src": {"path": "/x"}, "width": 10, "mode": "stretch"}, "invalid mode 'stretch'"),
        (images.resize, {"src": {"path": "/x"}, "width": 10, "mode": "fill"}, "needs width and height"),
        (images.convert, {"src": {"path": "/x"}}, "format option is required"),
        (images.chain, {"src": {"path": "/x"}, "steps": [{"op": "blur"}]}, "step 0: invalid step"),
        (images.chain, {"steps": [{"op": "thumbnail"}]}, "needs src"),
        (images.thumbnail, [1, 2], "expected a JSON object payload"),
    ]:
        with pytest.raises(MediaError, match=reason):
            fn(payload)


def test_resize_output_over_max_pixels_is_refused(tmp_path):
    src = tmp_path / "in.png"
    src.write_bytes(images.convert(b'{"format": "png"}\n' + jpeg(size=(10, 10))))
    with pytest.raises(MediaError, match="over the limit of 1000000 pixels"):
        images.resize({"src": {"path": str(src)}, "width": 2000, "height": 2000, "mode": "exact",
                       "max_pixels": 1_000_000})


# ---------------------------------------------------------------------------------------------- video
def test_probe(clip):
    info = video.probe({"src": {"path": clip}})
    assert (info["width"], info["height"], info["fps"], info["codec"]) == (320, 240, 25.0, "h264")
    assert info["duration"] == pytest.approx(2.0, abs=0.05)
    v, a = info["streams"]
    assert (v["type"], v["codec"], v["frames"]) == ("video", "h264", 50)
    assert (a["type"], a["codec"], a["sample_rate"]) == ("audio", "aac", 44100)


def test_frames_every_n_seconds(clip, tmp_path):
    res = video.frames({"src": {"path": clip}, "every": 0.5, "dest": {"dir": str(tmp_path / "f")}, "width": 160})
    assert res["count"] == 4 and (res["width"], res["height"]) == (160, 120)
    assert [round(f["t"], 2) for f in res["frames"]] == [0.0, 0.52, 1.0, 1.52]  # first frame at or after each
    for f in res["frames"]:
        im = opened(open(f["path"], "rb").read())
        assert (im.format, im.size) == ("JPEG", (160, 120))
    assert sorted(os.listdir(tmp_path / "f")) == ["frame-00001.jpg", "frame-00002.jpg", "frame-00003.jpg",
                                                   "frame-00004.jpg"]


def test_frames_at_given_times_skips_those_past_the_end(clip, tmp_path):
    res = video.frames({"src": {"path": clip}, "times": [1.2, 0.4, 30], "dest": {"dir": str(tmp_path)}})
    assert [f["t"] for f in res["frames"]] == [0.4, 1.2] and res["count"] == 2


def test_poster_bytes_and_dest(clip, tmp_path):
    im = opened(video.poster({"src": {"path": clip}, "width": 100}))
    assert (im.format, im.size) == ("JPEG", (100, 75))
    res = video.poster({"src": {"path": clip}, "at": 1.0, "dest": {"path": str(tmp_path / "p.jpg")}})
    assert res["t"] == pytest.approx(1.0) and (res["width"], res["height"]) == (320, 240)
    assert opened((tmp_path / "p.jpg").read_bytes()).size == (320, 240)


def test_transcode_to_h264_with_progress(clip, tmp_path):
    reports = []
    context._set(context.TaskContext("t1", "media.video.transcode", "default", 1,
                                     lambda pct, msg: reports.append(pct)))
    try:
        res = video.transcode({"src": {"path": clip}, "dest": {"path": str(tmp_path / "out.mp4")}, "width": 160,
                               "bitrate": "150k"})
    finally:
        context._set(None)
    assert (res["codec"], res["width"], res["height"]) == ("h264", 160, 120)
    assert res["duration"] == pytest.approx(2.0, abs=0.05)
    info = video.probe({"src": {"path": res["dest"]}})
    assert [s["codec"] for s in info["streams"]] == ["h264", "aac"] and info["streams"][0]["frames"] == 50
    assert reports == sorted(reports) and reports[-1] == 100 and len(reports) >= 40  # about every 1%
    assert os.listdir(tmp_path) == ["out.mp4"]


def test_transcode_without_audio(clip, tmp_path):
    res = video.transcode({"src": {"path": clip}, "dest": {"path": str(tmp_path / "o.mp4")}, "audio": False,
                           "crf": 30})
    assert [s["type"] for s in video.probe({"src": {"path": res["dest"]}})["streams"]] == ["video"]


def test_threads_divide_the_cores_among_the_children(monkeypatch):
    monkeypatch.setattr(video, "_threads", None)
    monkeypatch.setenv("XQ_MEDIA_THREADS", "3")
    assert video.threads() == 3
    monkeypatch.setattr(video, "_threads", None)
    monkeypatch.delenv("XQ_MEDIA_THREADS")
    assert video.threads() == len(os.sched_getaffinity(0))  # not in a worker: every usable core


def unsupported_codec(clip: str, path) -> str:
    """The clip with its video sample entry renamed to a FourCC no decoder knows."""
    data = bytearray(open(clip, "rb").read())
    at = data.index(b"avc1", data.index(b"stsd"))
    data[at:at + 4] = b"zq42"
    path.write_bytes(data)
    return str(path)


def test_bad_videos_raise_a_non_retryable_error_naming_the_problem(clip, tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(os.urandom(4096))
    half = tmp_path / "half.mp4"
    half.write_bytes(open(clip, "rb").read()[:20000])
    wav = tmp_path / "tone.wav"
    with av.open(str(wav), "w") as c:
        s = c.add_stream("pcm_s16le", rate=8000)
        f = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        f.sample_rate = 8000
        c.mux(s.encode(f))
        c.mux(s.encode(None))
    odd = unsupported_codec(clip, tmp_path / "odd.mp4")
    cases = [
        (video.probe, {"src": {"path": str(junk)}}, "cannot read .* as a video"),
        (video.poster, {"src": {"path": str(half)}, "at": 1.9}, "cannot (read|decode)|no decodable"),
        (video.poster, {"src": {"path": str(wav)}}, "has no video stream"),
        (video.transcode, {"src": {"path": odd}, "dest": {"path": str(tmp_path / "o.mp4")}},
         "no decoder|cannot decode"),
        (video.transcode, {"src": {"path": clip}}, "dest .* is required"),
        (video.transcode, {"src": {"path": clip}, "dest": {"path": "x.mp4"}, "bitrate": "fast"}, "invalid bitrate"),
        (video.frames, {"src": {"path": clip}, "dest": {"dir": str(tmp_path)}}, "exactly one of every"),
        (video.probe, {"src": {"url": "s3://b/v.mp4"}}, "expected {\"path\""),
    ]
    for fn, payload, reason in cases:
        with pytest.raises(MediaError, match=reason):
            fn(payload)
    assert not (tmp_path / "o.mp4").exists()
    assert not [n for n in os.listdir(tmp_path) if ".partial-" in n]


# ---------------------------------------------------------------------------------------------- end to end
def test_xq_run_serves_images_and_kills_bad_ones_without_retry(redis_url, tmp_path):
    p = xq.Producer(redis_url)
    with XQRun(redis_url, app="xq.media:app", procs=2) as w:
        good = p.enqueue("media.image.thumbnail", jpeg(orientation=6))
        dest = tmp_path / "r.png"
        ref = p.enqueue("media.image.resize", {"src": {"path": str(tmp_path / "missing.jpg")}, "width": 10})
        (tmp_path / "in.jpg").write_bytes(jpeg(size=(1000, 500)))
        fit = p.enqueue("media.image.resize", {"src": {"path": str(tmp_path / "in.jpg")}, "width": 100,
                                               "format": "png", "dest": {"path": str(dest)}})
        bad = p.enqueue("media.image.thumbnail", b"\x89PNG\r\n\x1a\n" + b"broken" * 10)
        im = opened(p.result(good, timeout=30))
        assert (im.format, im.size) == ("JPEG", (128, 256)), w.output()
        assert p.result(fit, timeout=30) == {"dest": str(dest), "width": 100, "height": 50, "format": "PNG",
                                             "bytes": dest.stat().st_size}
        for tid, reason in ((bad, "cannot decode the image (68 bytes)"), (ref, "does not exist")):
            st = wait_for(lambda: (s := p.status(tid))["status"] == "dead" and s, 30, what="dead")
            assert st["attempts"] == 1 and "MediaError" in st["error"] and reason in st["error"]
            # one log line a failed attempt, as Celery and RQ log them
            wait_for(lambda: f"task {tid} (media.image.thumbnail" in w.output() or f"task {tid} (media.image.resize"
                     in w.output(), 10, what="the failure's log line")
        assert f"task {bad} (media.image.thumbnail) attempt 1 failed, not retried: MediaError: " in w.output()
    p.close()


def test_xq_run_transcodes_with_progress_and_cancel_leaves_no_output(redis_url, clip, tmp_path):
    # long enough to cancel mid-way: 10 s of 640x480, encoded with a slow preset
    big = make_video(str(tmp_path / "big.mp4"), seconds=10, size=(640, 480))
    p = xq.Producer(redis_url)
    with XQRun(redis_url, app="xq.media:app", procs=2) as w:
        info = p.enqueue("media.video.probe", {"src": {"path": clip}})
        assert p.result(info, timeout=30)["streams"][0]["frames"] == 50, w.output()
        out = tmp_path / "small.mp4"
        ok = p.enqueue("media.video.transcode", {"src": {"path": clip}, "dest": {"path": str(out)}, "height": 120})
        res = p.result(ok, timeout=60)
        assert (res["codec"], res["width"], res["height"]) == ("h264", 160, 120)
        st = p.status(ok)
        assert st["progress"]["pct"] == 100 and st["attempts"] == 1
        slow_out = tmp_path / "slow.mp4"
        slow = p.enqueue("media.video.transcode", {"src": {"path": big}, "dest": {"path": str(slow_out)},
                                                   "preset": "veryslow"})
        wait_for(lambda: (p.status(slow).get("progress") or {}).get("pct", 0) >= 2, 60, what="transcode under way")
        assert p.cancel(slow) == "canceling"
        st = wait_for(lambda: (s := p.status(slow))["status"] == "canceled" and s, 30, what="canceled")
        assert st["progress"]["pct"] < 100 and st["attempts"] == 1
        assert not slow_out.exists()
        wait_for(lambda: not [n for n in os.listdir(tmp_path) if ".partial-" in n], 10, what="partial removed")
        junk = tmp_path / "junk.mp4"
        junk.write_bytes(b"\x00" * 5000)
        dead = p.enqueue("media.video.poster", {"src": {"path": str(junk)}})
        st = wait_for(lambda: (s := p.status(dead))["status"] == "dead" and s, 30, what="dead")
        assert st["attempts"] == 1 and "as a video" in st["error"]
    p.close()


def test_codec_threads_in_a_worker_share_the_cores_among_its_children(redis_url):
    p = xq.Producer(redis_url)
    assert "XQ_MEDIA_THREADS" not in os.environ
    with XQRun(redis_url, app="apps.mediathreads:app", procs=2) as w:
        assert p.result(p.enqueue("test.media.threads"), timeout=30) == max(1, len(os.sched_getaffinity(0)) // 2), \
            w.output()
    p.close()


def test_redis_cli_example_of_the_protocol_doc_runs(redis_server, redis_url, tmp_path):
    doc = (Path(__file__).parent.parent / "docs" / "protocol.md").read_text()
    script = doc.split("## Built-in media processors", 1)[1].split("redis-cli <<'EOF'\n", 1)[1].split("EOF\n", 1)[0]
    task_id = script.split("xq:{default}:t:", 1)[1].split()[0]
    (tmp_path / "in.jpg").write_bytes(jpeg(size=(1000, 500)))
    out = subprocess.run(["redis-cli", "-p", str(redis_server.port)], input=script.replace("/data/", f"{tmp_path}/"),
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    with XQRun(redis_url, app="xq.media:app", burst=True) as w:
        assert w.wait(60) == 0, w.output()
    p = xq.Producer(redis_url)
    assert p.result(task_id, timeout=5)["format"] == "WEBP"
    assert opened((tmp_path / "out.webp").read_bytes()).size == (800, 600)
    p.close()


# ---------------------------------------------------------------------------------------------- a new user's trial
# Each case below failed before it was fixed: a retried encode error, a white 16-bit image, a retried bad
# destination, partial outputs left by a timeout, a video decompression bomb, a TypeError retried, bad EXIF
# failing a "keep", one damaged packet failing a whole video, frames left by a failed task, text probed as video.
def task(name):
    """The handler xq runs for name (the registered one, wrapped in final_errors)."""
    return app.tasks[name].resolve()


def encoded(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("im, fmt, mode", [
    (Image.new("CMYK", (40, 30), (0, 255, 0, 0)), "png", "RGB"),
    (Image.new("CMYK", (40, 30), (0, 255, 0, 0)), "webp", "RGB"),
    (Image.new("F", (40, 30), 0.5), None, "L"),
    (Image.new("LA", (40, 30), (90, 128)), "jpeg", "L"),
    (Image.new("I;16", (40, 30), 300), "png", "I;16"),
], ids=["cmyk-png", "cmyk-webp", "float-tiff", "grey-alpha-jpeg", "16bit-png"])
def test_every_input_mode_converts_to_what_the_output_format_writes(im, fmt, mode):
    src = encoded(im, "TIFF" if im.mode in ("F", "I;16") else "JPEG" if im.mode == "CMYK" else "PNG")
    line = b'{"format": "%s"}\n' % fmt.encode() if fmt else b""
    out = opened(images.thumbnail(line + src))
    assert out.mode == mode or (mode == "I;16" and out.mode in ("I", "I;16"))


def test_16_bit_images_are_scaled_to_8_bits_not_clipped_white():
    im = Image.linear_gradient("L").resize((256, 64)).convert("I").point(lambda v: v * 257).convert("I;16")
    src = encoded(im, "PNG")
    for fmt in ("jpeg", "webp"):
        out = opened(images.convert(b'{"format": "%s"}\n' % fmt.encode() + src)).convert("L")
        lo, hi = out.getextrema()
        mean = sum(i * n for i, n in enumerate(out.histogram())) / (out.width * out.height)
        assert lo < 10 and hi > 245 and 100 < mean < 155, (fmt, lo, hi, mean)  # a gradient, not white


def test_encoder_limits_and_payload_types_fail_at_once_with_a_media_error(tmp_path):
    src = tmp_path / "in.png"
    src.write_bytes(encoded(Image.new("RGB", (100, 10)), "PNG"))
    for name, payload, reason in [
        ("media.image.resize", {"src": {"path": str(src)}, "width": 20000, "height": 100, "mode": "exact",
                                "format": "webp"}, "WebP images are at most 16383 pixels a side"),
        ("media.image.thumbnail", {"src": {"path": str(src)}, "format": ["png"]}, "invalid format"),
        ("media.image.chain", {"src": {"path": str(src)}, "steps": [{"op": ["resize"]}]}, "invalid step"),
        ("media.image.convert", {"src": {"path": str(src)}, "format": None}, "format option is required"),
        ("media.video.frames", {"src": {"path": str(src)}, "dest": {"dir": str(tmp_path)}, "every": None},
         "exactly one of every"),
        ("media.image.resize", {"src": {"path": str(src)}, "width": 10, "quality": {"a": 1}}, "invalid quality"),
    ]:
        with pytest.raises(MediaError, match=reason):
            task(name)(payload)


def test_an_unexpected_error_of_the_payload_is_final_but_a_file_error_is_retried():
    def broken(payload):
        return payload["a"]["b"]

    wrapped = __import__("xq.media.common", fromlist=["final_errors"]).final_errors("media.test.broken", broken)
    with pytest.raises(MediaError, match=r"media.test.broken: TypeError"):
        wrapped({"a": 3})

    def disk_full(payload):
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError) as ei:
        __import__("xq.media.common", fromlist=["final_errors"]).final_errors("media.test.full", disk_full)({})
    assert not isinstance(ei.value, MediaError)


def test_bad_exif_is_dropped_not_fatal_when_metadata_is_kept():
    good = jpeg(orientation=6)
    start = good.index(b"Exif\x00\x00")
    garbage = good[:start + 6] + b"\x00" * 40 + good[start + 46:]  # the TIFF header of the EXIF block zeroed
    for data in (garbage,):
        out = opened(images.thumbnail(b'{"metadata": "keep"}\n' + data))
        assert out.format == "JPEG"


def test_destinations_are_checked_before_the_work_and_name_the_users_path(clip, tmp_path):
    src = tmp_path / "in.jpg"
    src.write_bytes(jpeg())
    (tmp_path / "a-file").write_bytes(b"x")
    for name, payload, reason in [
        ("media.image.thumbnail", {"src": {"path": str(src)}, "dest": {"path": str(tmp_path / "no" / "x.jpg")}},
         "directory '.*/no' does not exist"),
        ("media.image.thumbnail", {"src": {"path": str(src)}, "dest": {"path": str(tmp_path)}}, "is a directory"),
        ("media.image.thumbnail", {"src": {"path": str(src)}, "dest": {"path": str(tmp_path / "a-file" / "x")}},
         "is not a directory"),
        ("media.video.transcode", {"src": {"path": clip}, "dest": {"path": str(tmp_path / "no" / "x.mp4")}},
         "does not exist"),
        ("media.video.transcode", {"src": {"path": clip}, "dest": {"path": str(tmp_path)}}, "is a directory"),
        ("media.video.frames", {"src": {"path": clip}, "dest": {"dir": str(tmp_path / "a-file")}, "every": 1},
         "not a directory"),
    ]:
        with pytest.raises(MediaError, match=reason):
            task(name)(payload)
    assert sorted(os.listdir(tmp_path)) == ["a-file", "in.jpg"]  # nothing created, no partial output


def test_a_partial_output_of_a_dead_process_is_swept_by_the_next_write(tmp_path):
    from xq.media import common

    dest = tmp_path / "out.jpg"
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f".out.jpg.partial-{common._HOST}-{dead.pid}"
    stale.write_bytes(b"half")
    other_host = tmp_path / f".out.jpg.partial-elsewhere-{dead.pid}"
    other_host.write_bytes(b"theirs")
    common.write_dest({"path": str(dest)}, b"whole", "image/jpeg")
    assert dest.read_bytes() == b"whole"
    assert not stale.exists() and other_host.exists()  # another host's writer may still be at work


def test_a_video_declaring_huge_frames_is_refused_before_decoding(tmp_path):
    gif = tmp_path / "bomb.gif"
    gif.write_bytes(encoded(Image.new("P", (10000, 10000)), "GIF"))
    for name, payload in [("media.video.poster", {"src": {"path": str(gif)}}),
                          ("media.video.frames", {"src": {"path": str(gif)}, "dest": {"dir": str(tmp_path / "f")},
                                                  "every": 1})]:
        with pytest.raises(MediaError, match="10000x10000 = 100000000 pixels, over the limit"):
            task(name)(payload)
    assert not (tmp_path / "f").exists()
    assert task("media.video.poster")({"src": {"path": str(gif)}, "max_pixels": 100_000_000})[:2] == b"\xff\xd8"


def damaged(clip: str, out: Path) -> str:
    """clip with the first 8 bytes of one video packet of its middle flipped (its NAL length prefix: the
    decoder rejects that packet as invalid data)."""
    with av.open(clip) as c:
        offs = [p.pos for p in c.demux(c.streams.video[0]) if p.pos is not None and p.size > 64]
    data = bytearray(open(clip, "rb").read())
    at = offs[len(offs) // 2]
    data[at:at + 8] = bytes(255 - b for b in data[at:at + 8])
    out.write_bytes(bytes(data))
    return str(out)


def test_a_damaged_packet_is_skipped_and_counted_as_ffmpeg_would(clip, tmp_path):
    bad = damaged(clip, tmp_path / "bad.mp4")
    res = task("media.video.transcode")({"src": {"path": bad}, "dest": {"path": str(tmp_path / "o.mp4")},
                                         "audio": False})
    assert res["damaged_packets"] >= 1 and res["duration"] > 1.5
    got = task("media.video.frames")({"src": {"path": bad}, "dest": {"dir": str(tmp_path / "f")}, "every": 0.5})
    assert got["count"] == 4 and got["damaged_packets"] >= 1


def test_frames_are_written_all_or_none(clip, tmp_path):
    out = tmp_path / "f"
    with pytest.raises(MediaError, match="more than max_frames=3"):
        task("media.video.frames")({"src": {"path": clip}, "dest": {"dir": str(out)}, "every": 0.2,
                                    "max_frames": 3})
    assert os.listdir(out) == []
    got = task("media.video.frames")({"src": {"path": clip}, "dest": {"dir": str(out)}, "every": 0.5})
    assert sorted(os.listdir(out)) == [f"frame-0000{i}.jpg" for i in range(1, 5)] and got["count"] == 4


def test_probe_refuses_what_is_neither_video_nor_audio(tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("just some text, not a picture\n" * 20)
    with pytest.raises(MediaError, match="not a video or audio file"):
        task("media.video.probe")({"src": {"path": str(text)}})


def test_a_timeout_removes_the_partial_output_of_its_transcode(redis_url, tmp_path):
    big = make_video(str(tmp_path / "big.mp4"), seconds=10, size=(640, 480))
    out = tmp_path / "out"
    out.mkdir()
    p = xq.Producer(redis_url)
    with XQRun(redis_url, app="xq.media:app", procs=1) as w:
        tid = p.enqueue("media.video.transcode", {"src": {"path": big}, "dest": {"path": str(out / "o.mp4")},
                                                  "preset": "veryslow"}, timeout=2, max_retries=0)
        st = wait_for(lambda: (s := p.status(tid))["status"] == "dead" and s, 60, what="the timeout")
        assert "timeout" in st["error"].lower() or "timed out" in st["reason"], w.output()
        assert os.listdir(out) == [], "the timed-out transcode left its partial file"
    p.close()


def test_errors_of_single_operation_tasks_do_not_speak_of_steps():
    """Only media.image.chain has steps; the others' errors named a 'step 0' the user never wrote."""
    for fn, payload in [(images.resize, {"src": {"path": "/x"}, "width": 10, "mode": "fill"}),
                        (images.thumbnail, b'{"size": "big"}\n' + jpeg())]:
        with pytest.raises(MediaError) as ei:
            fn(payload)
        assert "step" not in str(ei.value), ei.value
    with pytest.raises(MediaError, match=r"media.image.chain, step 1: invalid size"):
        images.chain({"src": {"path": "/x"}, "steps": [{"op": "thumbnail"}, {"op": "thumbnail", "size": "big"}]})
