"""Generate the bundled sample video ``src/cope/assets/sample.mp4`` (procedural, no third-party
footage): 12 s, 640×360, 30 fps H.264 with B-frames, so the demo shows a real transcode.

A textured background pans slowly left; a red disc moves right for 4 s, then back left; a blue
square falls and stops. Run: ``python scripts/make_sample_video.py`` (deterministic).
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

WIDTH, HEIGHT, FPS, SECONDS = 640, 360, 30, 12
OUT = Path(__file__).resolve().parent.parent / "src" / "cope" / "assets" / "sample.mp4"


def background(rng: np.random.Generator) -> np.ndarray:
    """A smooth colour texture wider than the frame, so the camera can pan across it."""
    noise = rng.random((HEIGHT // 8 + 2, (WIDTH + 400) // 8 + 2, 3)).astype(np.float32)
    tex = np.repeat(np.repeat(noise, 8, axis=0), 8, axis=1)
    for _ in range(4):  # box blur: soft blobs with enough detail for motion estimation
        tex = (tex + np.roll(tex, 3, 0) + np.roll(tex, -3, 0) + np.roll(tex, 3, 1) + np.roll(tex, -3, 1)) / 5
    tex = (tex - tex.min()) / (tex.max() - tex.min())
    return (60 + 150 * tex[:HEIGHT, : WIDTH + 400]).astype(np.uint8)


def render(bg: np.ndarray, i: int) -> np.ndarray:
    t = i / FPS
    pan = int(round(20 * t))  # the view moves right → content moves left on screen
    frame = bg[:, pan : pan + WIDTH].copy()
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    disc_x = 120 + 60 * t if t < 4 else 360 - 45 * (t - 4)  # right, then back left
    disc = (xx - disc_x) ** 2 + (yy - 200) ** 2 < 40**2
    frame[disc] = (220, 40, 40)
    square_y = min(40 + 50 * t, 260)
    square = (abs(xx - 500) < 30) & (abs(yy - square_y) < 30)
    frame[square] = (40, 70, 220)
    return frame


def main() -> None:
    rng = np.random.default_rng(7)
    bg = background(rng)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(OUT), "w") as out:
        stream = out.add_stream("libx264", rate=FPS, options={"crf": "26", "bf": "2", "g": "120"})
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        for i in range(FPS * SECONDS):
            frame = av.VideoFrame.from_ndarray(render(bg, i), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
