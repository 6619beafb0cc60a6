"""Video processors (PyAV): probe, frames, poster, transcode.  Video travels by reference (a local path),
never through Redis.  docs/protocol.md, "Built-in media processors", has the payload schemas.

Decoding and encoding threads per child: the usable cores divided by the worker's children (the siblings of
this process under its supervisor), at least 1, so `xq run --procs auto` does not oversubscribe the cores;
XQ_MEDIA_THREADS overrides it.
"""

from __future__ import annotations

import io
import os
from fractions import Fraction
from typing import Any

from .. import context
from ..cpus import usable_cpus
from .common import (MediaError, check_dest, check_dir, check_int, check_keys, check_number, file_error, options,
                     partial_path, removed_if_stopped, require, source_path, sweep_partials, write_dest)

MAX_SIDE = 8192          # pixels: the largest output side a frame, poster or transcode may ask for
MAX_FRAMES = 10000       # frames one media.video.frames task may write
MAX_PIXELS = 89_478_485  # pixels a decoded frame may have by default (max_pixels): Pillow's own image limit
BAD_PACKETS = 10         # damaged packets skipped before a video counts as broken (and 5% of those read)
PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")
_threads: int | None = None


def threads() -> int:
    """Codec threads for this process: XQ_MEDIA_THREADS, else usable cores // children of the supervisor
    (inside an xq worker; all usable cores outside one), at least 1.  Computed once per process."""
    global _threads
    if _threads is None:
        env = os.environ.get("XQ_MEDIA_THREADS", "")
        if env.isdigit() and int(env) > 0:
            _threads = int(env)
        else:
            cores = usable_cpus()
            siblings = 1
            if context._current is not None:  # a worker's child: its supervisor forked only children
                import psutil

                try:
                    siblings = max(1, len(psutil.Process(os.getppid()).children()))
                except psutil.Error:
                    pass
            _threads = max(1, cores // siblings)
    return _threads


def _av():
    return require("av", "video")


def _open(path: str, what: str):
    av = _av()
    try:
        return av.open(path, metadata_errors="ignore")
    except av.FFmpegError as e:
        raise MediaError(f"{what}: cannot read {path!r} as a video: {e}") from None


def _video_stream(container, path: str, what: str, max_pixels: int = MAX_PIXELS):
    """The first video stream, checked before anything is decoded: a decoder, a picture size, and no more
    pixels a frame than max_pixels (a decompression bomb: a tiny file declaring huge frames)."""
    if not container.streams.video:
        raise MediaError(f"{what}: {path!r} has no video stream")
    vs = container.streams.video[0]
    if vs.codec_context is None:
        raise MediaError(f"{what}: {path!r}: no decoder for its video codec in this worker's PyAV build")
    w, h = vs.codec_context.width, vs.codec_context.height
    if not w or not h:
        raise MediaError(f"{what}: {path!r} is not a video: its video stream has no picture size ({w}x{h})")
    if w * h > max_pixels:
        raise MediaError(f"{what}: {path!r} has frames of {w}x{h} = {w * h} pixels, over the limit of "
                         f"{max_pixels} pixels (max_pixels)")
    vs.thread_type = "AUTO"
    vs.codec_context.thread_count = threads()
    return vs


def _duration(container, vs) -> float | None:
    if vs is not None and vs.duration is not None and vs.time_base:
        return float(vs.duration * vs.time_base)
    if container.duration is not None:
        return container.duration / _av().time_base
    return None


def _fps(vs) -> float | None:
    rate = vs.average_rate or vs.base_rate or vs.guessed_rate
    return float(rate) if rate else None


class Decoder:
    """Frames of streams in decode order, as the ffmpeg tool decodes: a damaged packet is skipped (counted in
    .damaged), up to BAD_PACKETS and 5% of the packets read; past that, or with nothing decodable at all,
    MediaError.  A frame over max_pixels (a stream that grew past what its header said) is MediaError too."""

    def __init__(self, container, streams, what: str, path: str, max_pixels: int = MAX_PIXELS):
        self.container, self.streams, self.what, self.path, self.max_pixels = container, streams, what, path, max_pixels
        self.damaged = 0

    def __iter__(self):
        av = _av()
        packets, frames, last = 0, 0, None
        try:
            for packet in self.container.demux(self.streams):
                packets += 1
                try:
                    decoded = packet.decode()
                except av.FFmpegError as e:
                    self.damaged, last = self.damaged + 1, e
                    if self.damaged > BAD_PACKETS and self.damaged > packets // 20:
                        raise MediaError(f"{self.what}: cannot decode {self.path!r}: {self.damaged} of {packets} "
                                         f"packets damaged ({e})") from None
                    continue
                for frame in decoded:
                    if getattr(frame, "width", 0) * getattr(frame, "height", 0) > self.max_pixels:
                        raise MediaError(f"{self.what}: {self.path!r} has a frame of {frame.width}x{frame.height} "
                                         f"pixels, over the limit of {self.max_pixels} pixels (max_pixels)")
                    frames += 1
                    yield frame
        except av.FFmpegError as e:
            raise MediaError(f"{self.what}: cannot decode {self.path!r}: {e}") from None
        if not frames and last is not None:
            raise MediaError(f"{self.what}: cannot decode {self.path!r}: no packet decodes ({last})")


def _seek(container, vs, t: float) -> None:
    """Move to the keyframe at or before t seconds, so decoding starts near t (from the start if it cannot)."""
    if t > 0 and vs.time_base:
        try:
            container.seek(int(t / vs.time_base), stream=vs, backward=True)
        except _av().FFmpegError:
            container.seek(0, stream=vs)


def _scaled(width: int, height: int, opts: dict, what: str, even: bool = False) -> tuple[int, int]:
    """Output size: width and/or height given fit the box keeping the aspect ratio; neither keeps the size."""
    w = check_int(opts, "width", what, hi=MAX_SIDE)
    h = check_int(opts, "height", what, hi=MAX_SIDE)
    if w or h:
        scale = min(w / width if w else float("inf"), h / height if h else float("inf"))
        width, height = max(1, round(width * scale)), max(1, round(height * scale))
    if even:  # yuv420p needs even sides
        width, height = max(2, width - width % 2), max(2, height - height % 2)
    return width, height


def _jpeg(frame, size: tuple[int, int], quality: int) -> bytes:
    im = frame.to_image()
    if im.size != size:
        from PIL import Image

        im = im.resize(size, Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def probe(payload: Any) -> dict:
    """media.video.probe: container, duration, and each stream's type, codec, size, fps, bit rate."""
    what = "media.video.probe"
    opts = options(payload, what)
    check_keys(opts, ("src",), what)
    path = source_path(opts.get("src"), what)
    with _open(path, what) as c:
        streams = []
        for s in c.streams:
            cc = s.codec_context
            d = {"index": s.index, "type": s.type, "codec": cc.name if cc is not None else None,
                 "duration": float(s.duration * s.time_base) if s.duration is not None and s.time_base else None,
                 "bit_rate": cc.bit_rate if cc is not None and cc.bit_rate else None}
            if s.type == "video":
                d.update(width=cc.width, height=cc.height, fps=_fps(s), frames=s.frames or None,
                         pix_fmt=cc.pix_fmt)
            elif s.type == "audio":
                d.update(sample_rate=cc.sample_rate, channels=cc.layout.nb_channels if cc.layout else None)
            streams.append(d)
        if not any(d.get("width") and d.get("height") or d.get("sample_rate") for d in streams):
            raise MediaError(f"{what}: {path!r} is not a video or audio file: no stream has a picture size or a "
                             f"sample rate" + (f" (read as {c.format.name})" if streams else ""))
        vs = c.streams.video[0] if c.streams.video else None
        out = {"format": c.format.name, "duration": _duration(c, vs), "bit_rate": c.bit_rate or None,
               "streams": streams}
        if vs is not None:
            out.update(width=vs.codec_context.width, height=vs.codec_context.height, fps=_fps(vs),
                       codec=vs.codec_context.name)
        return out


def frames(payload: Any) -> dict:
    """media.video.frames: JPEGs every N seconds ("every") or at given times ("times"), written to dest.dir:
    all of them or none (they are written to a hidden directory beside them and moved in at the end)."""
    what = "media.video.frames"
    opts = options(payload, what)
    check_keys(opts, ("src", "dest", "every", "times", "width", "height", "quality", "max_frames", "max_pixels"),
               what)
    path = source_path(opts.get("src"), what)
    dest = opts.get("dest")
    if not (isinstance(dest, dict) and set(dest) == {"dir"} and isinstance(dest["dir"], str) and dest["dir"]):
        raise MediaError(f"{what}: invalid dest {dest!r}: expected {{\"dir\": \"/directory\"}}")
    if (opts.get("every") is None) == (opts.get("times") is None):
        raise MediaError(f"{what}: give exactly one of every (seconds) or times (a list of seconds)")
    max_frames = check_int(opts, "max_frames", what, default=1000, hi=MAX_FRAMES)
    quality = check_int(opts, "quality", what, default=85, hi=100)
    max_pixels = check_int(opts, "max_pixels", what, default=MAX_PIXELS, hi=1 << 40)
    every = check_number(opts, "every", what, lo=0.001)
    times = opts.get("times")
    if times is not None:
        if not (isinstance(times, list) and times and len(times) <= max_frames and all(
                isinstance(t, (int, float)) and not isinstance(t, bool) and 0 <= t <= 1e9 for t in times)):
            raise MediaError(f"{what}: invalid times {times!r}: expected a list of 1..{max_frames} seconds >= 0")
        times = sorted(set(float(t) for t in times))
    out_dir = dest["dir"]
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise MediaError(f"{what}: dest dir {out_dir!r} exists and is not a directory")
    out: list[dict] = []
    with _open(path, what) as c:
        vs = _video_stream(c, path, what, max_pixels)
        size = _scaled(vs.codec_context.width, vs.codec_context.height, opts, what)
        try:
            os.makedirs(out_dir, exist_ok=True)
        except OSError as e:
            raise file_error(e, out_dir, what, "create") from None
        check_dir(out_dir, what)
        marker = os.path.join(out_dir, "frames")
        sweep_partials(marker)
        tmp = partial_path(marker)
        with removed_if_stopped(tmp):
            os.mkdir(tmp)
            next_t = 0.0 if every else times[0]
            _seek(c, vs, next_t)
            dec = Decoder(c, [vs], what, path, max_pixels)
            for frame in dec:
                t = frame.time
                if t is None or t + 1e-6 < next_t:
                    continue
                if len(out) == max_frames:
                    raise MediaError(f"{what}: more than max_frames={max_frames} frames requested")
                name = f"frame-{len(out) + 1:05d}.jpg"
                with open(os.path.join(tmp, name), "wb") as f:
                    f.write(_jpeg(frame, size, quality))
                out.append({"t": round(t, 6), "path": os.path.join(out_dir, name)})
                if every:
                    next_t += every * (int((t + 1e-6 - next_t) / every) + 1)
                else:
                    later = [x for x in times if x > t + 1e-6]
                    if not later:
                        break
                    next_t = later[0]
            for o in out:  # all decoded and written: move them in
                os.replace(os.path.join(tmp, os.path.basename(o["path"])), o["path"])
            os.rmdir(tmp)
    return {"frames": out, "count": len(out), "width": size[0], "height": size[1], "damaged_packets": dec.damaged}


def poster(payload: Any) -> Any:
    """media.video.poster: one frame as a JPEG, at "at" seconds or "at_fraction" of the duration (0.1)."""
    what = "media.video.poster"
    opts = options(payload, what)
    check_keys(opts, ("src", "dest", "at", "at_fraction", "width", "height", "quality", "max_pixels"), what)
    path = source_path(opts.get("src"), what)
    if "at" in opts and "at_fraction" in opts:
        raise MediaError(f"{what}: give at (seconds) or at_fraction (0..1), not both")
    at = check_number(opts, "at", what)
    fraction = check_number(opts, "at_fraction", what, default=0.1, hi=1.0)
    quality = check_int(opts, "quality", what, default=85, hi=100)
    max_pixels = check_int(opts, "max_pixels", what, default=MAX_PIXELS, hi=1 << 40)
    dest = check_dest(opts.get("dest"), what)
    with _open(path, what) as c:
        vs = _video_stream(c, path, what, max_pixels)
        if at is None:
            at = fraction * (_duration(c, vs) or 0.0)
        size = _scaled(vs.codec_context.width, vs.codec_context.height, opts, what)
        _seek(c, vs, at)
        chosen = None
        for frame in Decoder(c, [vs], what, path, max_pixels):
            chosen = frame
            if frame.time is not None and frame.time + 1e-6 >= at:
                break
        if chosen is None:
            raise MediaError(f"{what}: {path!r} has no decodable video frame")
        data, t = _jpeg(chosen, size, quality), chosen.time
    if dest is None:
        return data
    written = write_dest(dest, data, "image/jpeg", what)
    return {"dest": written, "width": size[0], "height": size[1], "format": "JPEG", "bytes": len(data), "t": t}


def _bitrate(value, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, str) and value[-1:].lower() in ("k", "m") and value[:-1].replace(".", "", 1).isdigit():
        value = float(value[:-1]) * (1000 if value[-1] in "kK" else 1_000_000)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 10_000 <= value <= 1_000_000_000:
        raise MediaError(f"{what}: invalid bitrate {value!r}: expected bits/s 10000..1e9, or a string like "
                         f"'800k' or '2.5M'")
    return int(value)


def transcode(payload: Any) -> dict:
    """media.video.transcode: H.264 (+ AAC audio unless "audio": false) in MP4 at a size and bitrate, written
    to dest.path (a partial file renamed when complete); progress reported about every 1%."""
    what = "media.video.transcode"
    opts = options(payload, what)
    check_keys(opts, ("src", "dest", "width", "height", "bitrate", "crf", "preset", "audio", "max_pixels"), what)
    path = source_path(opts.get("src"), what)
    dest = check_dest(opts.get("dest"), what, kinds=("path",))
    if dest is None:
        raise MediaError(f"{what}: dest {{\"path\": \"/out.mp4\"}} is required (video never travels by Redis)")
    bitrate = _bitrate(opts.get("bitrate"), what)
    crf = check_int(opts, "crf", what, lo=0, hi=51)
    if bitrate and crf is not None:
        raise MediaError(f"{what}: give bitrate or crf, not both")
    preset = opts.get("preset", "veryfast")
    if preset not in PRESETS:
        raise MediaError(f"{what}: invalid preset {preset!r}: expected one of {', '.join(PRESETS)}")
    audio = opts.get("audio", True)
    if not isinstance(audio, bool):
        raise MediaError(f"{what}: invalid audio {audio!r}: expected true or false")
    max_pixels = check_int(opts, "max_pixels", what, default=MAX_PIXELS, hi=1 << 40)
    av = _av()
    sweep_partials(dest["path"])
    tmp = partial_path(dest["path"])
    with removed_if_stopped(tmp):  # canceled (xq.Cancelled between packets), bad media, a full disk: no half output
        with _open(path, what) as inp:
            vs = _video_stream(inp, path, what, max_pixels)
            width, height = _scaled(vs.codec_context.width, vs.codec_context.height, opts, what, even=True)
            duration = _duration(inp, vs) or 0.0
            with av.open(tmp, "w", format="mp4") as out:
                ovs = out.add_stream("libx264", rate=vs.average_rate or Fraction(25))
                ovs.width, ovs.height, ovs.pix_fmt = width, height, "yuv420p"
                x264 = {"preset": preset, "threads": str(threads())}
                if bitrate:
                    ovs.bit_rate = bitrate
                else:
                    x264["crf"] = str(23 if crf is None else crf)
                ovs.codec_context.options = x264
                streams, oas = [vs], None
                if audio and inp.streams.audio and inp.streams.audio[0].codec_context is not None:
                    ias = inp.streams.audio[0]
                    oas = out.add_stream("aac", rate=ias.codec_context.sample_rate or 48000)
                    streams.append(ias)
                report, last = context._current, -1
                dec = Decoder(inp, streams, what, path, max_pixels)
                for frame in dec:
                    if frame.pts is None:
                        continue
                    if isinstance(frame, av.AudioFrame):
                        out.mux(oas.encode(frame))
                        continue
                    out.mux(ovs.encode(frame.reformat(width, height, "yuv420p")))
                    if report is not None and duration and frame.time is not None:
                        pct = min(99, int(frame.time * 100 / duration))
                        if pct > last:
                            last = pct
                            report.progress(pct, f"{frame.time:.1f} / {duration:.1f} s")
                out.mux(ovs.encode(None))
                if oas is not None:
                    out.mux(oas.encode(None))
        try:
            os.replace(tmp, dest["path"])
        except OSError as e:
            raise file_error(e, dest["path"], what) from None
    with _open(dest["path"], what) as c:
        ov = c.streams.video[0]
        result = {"dest": dest["path"], "width": ov.codec_context.width, "height": ov.codec_context.height,
                  "duration": _duration(c, ov), "codec": ov.codec_context.name, "bytes": os.path.getsize(dest["path"]),
                  "damaged_packets": dec.damaged}
    if report is not None:
        report.progress(100, "done")
    return result
