"""xq.media throughput through a real `xq run xq.media:app` against the same code in a multiprocessing.Pool
of the same size with no queue at all; the ratio (xq / Pool) is what the queue costs.

- thumbnails/s of 12-megapixel JPEGs (4000x3000, generated), sent as bytes payloads (the image in Redis)
  and as path references;
- frames/s extracted as JPEGs from a 1080p H.264 video (generated, 10 s at 25 fps, a keyframe a second),
  split into 2 x procs media.video.frames tasks of one time slice each.

xq's time runs from the start of enqueue_many to the last task's finish (its record's `fin`), after a
warm-up task per child; the Pool's is the map() call, after a warm-up too.  Codec threads: xq's children
divide the cores among themselves (xq.media.video.threads); the Pool's workers are given the same count.
Rounds alternate xq, Pool, xq, Pool (the machine is shared and noisy).

    PYTHONPATH=. python3 bench/media_throughput.py [--images 40] [--rounds 2] [--procs auto]
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time

import redis

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import xq  # noqa: E402
from benchutil import drain_window, flush, private_redis  # noqa: E402
from xq.media import images, video  # noqa: E402


def make_jpegs(d: str, n: int, size=(4000, 3000)) -> list[str]:
    """n distinct 12-megapixel JPEGs: a gradient and noise, so they compress like photos (~2-4 MB)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(7)
    ys, xs = np.mgrid[0:size[1], 0:size[0]]
    base = np.stack([(xs * 255 // size[0]), (ys * 255 // size[1]), ((xs + ys) * 255 // sum(size))], -1)
    base = (base + rng.integers(0, 24, base.shape)).astype(np.uint8)
    paths = []
    for i in range(n):
        arr = base + np.uint8(i * 5 % 256)  # uint8: wraps around
        path = os.path.join(d, f"img-{i:03d}.jpg")
        Image.fromarray(arr).save(path, "JPEG", quality=90)
        paths.append(path)
    return paths


def make_video(path: str, seconds: int = 10, fps: int = 25, size=(1920, 1080)) -> str:
    import av
    import numpy as np

    w, h = size
    xs = np.arange(w)
    with av.open(path, "w") as c:
        vs = c.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt, vs.codec_context.gop_size = w, h, "yuv420p", fps
        vs.codec_context.options = {"preset": "veryfast"}
        for i in range(seconds * fps):
            arr = np.empty((h, w, 3), np.uint8)
            arr[:, :, 0] = ((xs + 8 * i) % 256)[None, :]
            arr[:, :, 1] = (np.arange(h) * 255 // h)[:, None]
            arr[:, :, 2] = (i * 7) % 256
            c.mux(vs.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")))
        c.mux(vs.encode(None))
    return path


def frame_payloads(src: str, out: str, tasks: int, seconds: float = 10.0, step: float = 0.1) -> list[dict]:
    """tasks payloads, each extracting a frame every `step` s of its own slice of the video."""
    n = round(seconds / step)
    per = -(-n // tasks)
    return [{"src": {"path": src}, "dest": {"dir": os.path.join(out, f"t{k}")}, "width": 640,
             "times": [round(j * step, 3) for j in range(k * per, min(n, (k + 1) * per))]}
            for k in range(tasks) if k * per < n]


def _pool_init(threads: int) -> None:
    video._threads = threads


def _pool_thumb(payload):
    return len(images.thumbnail(payload))


def _pool_frames(payload):
    return video.frames(payload)["count"]


def run_pool(procs: int, threads: int, fn, payloads: list, warm) -> float:
    with multiprocessing.get_context("fork").Pool(procs, _pool_init, (threads,)) as pool:
        pool.map(fn, [warm] * procs, chunksize=1)
        t0 = time.perf_counter()
        pool.map(fn, payloads, chunksize=1)
        return time.perf_counter() - t0


def run_xq(url: str, procs: int, name: str, payloads: list, warm) -> tuple[float, float, float]:
    """(enqueue start -> last finish, the enqueue_many call, first claim -> last finish) in seconds."""
    r = redis.Redis.from_url(url)
    flush(r)
    p = xq.Producer(url)
    sup = subprocess.Popen([sys.executable, "-m", "xq.cli", "run", "xq.media:app", "--redis", url, "--procs",
                            str(procs), "--log-level", "error"])
    try:
        for tid in p.enqueue_many(name, [warm] * procs):
            p.result(tid, timeout=120)
        t0 = time.time()
        ids = p.enqueue_many(name, payloads)
        t_enq = time.time() - t0
        for tid in ids:
            p.result(tid, timeout=600)
        first, last = drain_window(r, "default", ids)
        return last - t0, t_enq, last - first
    finally:
        sup.terminate()
        sup.wait(timeout=30)
        p.close()
        r.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--procs", default="auto")
    args = ap.parse_args()
    procs = len(os.sched_getaffinity(0)) if args.procs == "auto" else int(args.procs)
    threads = max(1, len(os.sched_getaffinity(0)) // procs)
    d = tempfile.mkdtemp(prefix="xq-bench-media-")
    try:
        t = time.perf_counter()
        paths = make_jpegs(d, args.images)
        blobs = [open(p, "rb").read() for p in paths]
        clip = make_video(os.path.join(d, "1080p.mp4"))
        print(f"generated {len(paths)} JPEGs of 4000x3000 ({sum(map(len, blobs)) / len(blobs) / 1e6:.1f} MB each) "
              f"and a 10 s 1080p video ({os.path.getsize(clip) / 1e6:.1f} MB) in {time.perf_counter() - t:.1f} s; "
              f"procs {procs}, codec threads per process {threads}")
        buf = io.BytesIO()
        from PIL import Image
        Image.new("RGB", (64, 64)).save(buf, "JPEG")
        warm_img = buf.getvalue()
        out = os.path.join(d, "frames")
        cases = [
            ("thumbnails/s, bytes payload", "media.image.thumbnail", _pool_thumb, lambda: blobs, warm_img,
             lambda: len(blobs)),
            ("thumbnails/s, path payload", "media.image.thumbnail", _pool_thumb,
             lambda: [{"src": {"path": p}} for p in paths], warm_img, lambda: len(paths)),
            ("1080p frames/s (JPEG 640x360)", "media.video.frames", _pool_frames,
             lambda: frame_payloads(clip, out, 2 * procs), {"src": {"path": clip}, "times": [0.0],
                                                             "dest": {"dir": os.path.join(out, "warm")}},
             lambda: 100),
        ]
        with private_redis() as (url, _pid):
            for label, name, fn, payloads, warm, count in cases:
                xs, ps, notes = [], [], []
                # An untimed xq round first: a fresh Redis page-faults in every byte of its first 172 MB
                # (the first timed round's enqueue took 0.9-1.3 s against 0.3 s after), which a running
                # Redis has long since mapped.
                shutil.rmtree(out, ignore_errors=True)
                run_xq(url, procs, name, payloads(), warm)
                for _ in range(args.rounds):
                    shutil.rmtree(out, ignore_errors=True)
                    total, t_enq, window = run_xq(url, procs, name, payloads(), warm)
                    xs.append(count() / total)
                    notes.append(f"enqueue {t_enq:.2f} s, claim->finish {window:.2f} s")
                    shutil.rmtree(out, ignore_errors=True)
                    ps.append(count() / run_pool(procs, threads, fn, payloads(), warm))
                ratios = " ".join(f"{x / p:.3f}" for x, p in zip(xs, ps))
                print(f"{label:32} xq {' / '.join(f'{x:7.1f}' for x in xs)}"
                      f"   Pool {' / '.join(f'{p:7.1f}' for p in ps)}"
                      f"   ratio xq/Pool {ratios}   (xq: {'; '.join(notes)})")
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
