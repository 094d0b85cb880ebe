"""Transcode any video PyAV can read into the canonical stream, cached by content hash.

The canonical stream is what the paper re-encodes everything to (§4.1): MPEG-4 Part 2, I- and
P-frames only, a fixed GOP, a fixed frame rate. We add: sides multiples of 16 (so every pixel is
predicted exactly, see ``residual.py``), one 16×16 half-pel vector per macroblock (no 4MV, no
quarter-pel, no GMC) and a pinned quantiser, so two runs on the same input give the same stream.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import av

from cope import signals
from cope.codec.primitives import StreamInfo
from cope.errors import CopeInputError
from cope.hub import atomic_write_text
from cope.npz import remove_orphans

# Sources larger than this are refused: decoding them would take minutes and gigabytes for a
# model that sees 384×384 frames anyway (8K UHD is 7680×4320).
MAX_SOURCE_SIDE = 8192
MAX_SOURCE_PIXELS = 8192 * 4352
MAX_CANONICAL_SIDE = 2048
# Bump when the canonical encoding changes, so old cache entries are not reused.
CACHE_FORMAT_VERSION = 3  # 3: S-frames counted as their own type


# Which stream extraction reads: the canonical transcode; the source's own H.264 / MPEG-4 stream
# (``cope.codec.native``); or native where the source allows it, canonical otherwise.
CODEC_CHOICES = ("canonical", "native", "auto")


@dataclass(frozen=True)
class CanonicalSettings:
    """How the canonical stream is encoded. The defaults are the paper's setting.

    ``codec`` picks the stream extraction reads (``CODEC_CHOICES``). In native mode the source's
    own frame rate and GOPs replace ``fps``, ``gop`` and ``quantizer``; every output array still
    has the canonical ``width`` × ``height``.
    """

    fps: int = 30  # paper §4.1: 30 FPS
    gop: int = 240  # paper §4.1: GOP of 240 frames (8 s)
    width: int = 384  # SigLIP-so400m-patch14-384 input side
    height: int = 384
    quantizer: int = 3  # pinned MPEG-4 quantiser (qmin = qmax), 2 = best … 31 = worst
    codec: str = "canonical"  # one of CODEC_CHOICES

    def validate(self) -> None:
        if self.codec not in CODEC_CHOICES:
            raise CopeInputError(f"codec {self.codec!r} must be one of {', '.join(CODEC_CHOICES)}")
        for name in ("width", "height"):
            side = getattr(self, name)
            if side <= 0 or side % 16 or side > MAX_CANONICAL_SIDE:
                raise CopeInputError(
                    f"canonical {name} {side} must be a positive multiple of 16 up to {MAX_CANONICAL_SIDE}"
                )
        if not 1 <= self.fps <= 240:
            raise CopeInputError(f"canonical fps {self.fps} must be between 1 and 240")
        if not 1 <= self.gop <= 10_000:
            raise CopeInputError(f"canonical GOP {self.gop} must be between 1 and 10000 frames")
        if not 2 <= self.quantizer <= 31:
            raise CopeInputError(f"quantizer {self.quantizer} must be between 2 and 31")

    def cache_key(self) -> str:
        """The transcode's settings: ``codec`` picks a reader, it does not change the stream."""
        encoding = {name: value for name, value in asdict(self).items() if name != "codec"}
        settings = json.dumps({**encoding, "version": CACHE_FORMAT_VERSION}, sort_keys=True)
        return hashlib.sha256(settings.encode()).hexdigest()[:16]


@dataclass
class CanonicalVideo:
    """A canonical stream on disk and what we learned about its source while making it."""

    path: Path
    source: StreamInfo
    settings: CanonicalSettings | None  # None: the input's own stream (--no-transcode)
    # Corrupt source data: packets the decoder rejected plus errors FFmpeg logged while decoding
    # (H.264 conceals damaged macroblocks and still outputs the frame).
    decode_errors: int = 0


def default_cache_dir() -> Path:
    return Path(os.environ.get("COPE_CACHE_DIR", Path.home() / ".cache" / "cope")) / "canonical"


def check_video_path(path: str | os.PathLike) -> Path:
    """Fail early, in one line, on paths that cannot be a video."""
    path = Path(path)
    if not path.exists():
        raise CopeInputError(f"{path}: no such file")
    if path.is_dir():
        raise CopeInputError(f"{path}: is a directory, not a video file")
    if path.stat().st_size == 0:
        raise CopeInputError(f"{path}: empty file")
    if not os.access(path, os.R_OK):
        raise CopeInputError(f"{path}: not readable (permission denied)")
    return path


def open_video_stream(path: Path) -> tuple[av.container.InputContainer, av.video.stream.VideoStream]:
    """Open a container and pick its first video stream, whatever else the file holds."""
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        if _mp4_without_moov(path):
            raise CopeInputError(
                f"{path}: not a readable video: it looks truncated or unfinished (an MP4/MOV "
                "without its 'moov' index: a recording or download that did not complete)"
            ) from exc
        raise CopeInputError(f"{path}: not a readable video ({_reason(exc)})") from exc
    if not container.streams.video:
        kinds: list[str] = sorted({str(s.type) for s in container.streams}) or ["no streams"]
        container.close()
        raise CopeInputError(f"{path}: no video stream (found: {', '.join(kinds)})")
    stream = container.streams.video[0]
    if stream.codec_context is None:  # FFmpeg has no decoder for it (or the header is damaged)
        container.close()
        raise CopeInputError(f"{path}: the video stream's codec is unknown or its header is damaged")
    width, height = stream.codec_context.width, stream.codec_context.height
    if width > MAX_SOURCE_SIDE or height > MAX_SOURCE_SIDE or width * height > MAX_SOURCE_PIXELS:
        container.close()
        raise CopeInputError(
            f"{path}: resolution {width}x{height} exceeds the supported maximum "
            f"({MAX_SOURCE_SIDE} per side, {MAX_SOURCE_PIXELS} pixels)"
        )
    return container, stream


def header_duration_s(container, stream) -> float | None:
    """The duration the file's headers state (the stream's, else the container's), or None."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _mp4_without_moov(path: Path) -> bool:
    """An ISO-BMFF file (``ftyp`` first) whose top-level boxes hold no ``moov``: the index a
    recorder writes last, so its absence means the file was never finished."""
    with open(path, "rb") as f:
        size = path.stat().st_size
        position, boxes = 0, list[bytes]()
        while position + 8 <= size and len(boxes) < 1000:
            f.seek(position)
            header = f.read(16)
            length, kind = int.from_bytes(header[:4], "big"), header[4:8]
            if length == 1 and len(header) == 16:  # 64-bit size
                length = int.from_bytes(header[8:16], "big")
            boxes.append(kind)
            if length < 8:  # 0 = "to the end of the file"; anything else smaller is damage
                break
            position += length
    return bool(boxes) and boxes[0] == b"ftyp" and b"moov" not in boxes


def _reason(exc: Exception) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return text.strip().rstrip(".").splitlines()[0] if text else type(exc).__name__


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def transcode(
    path: str | os.PathLike,
    settings: CanonicalSettings | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = False,
) -> CanonicalVideo:
    """Return the canonical stream of ``path``, transcoding it unless the cache has it.

    Cache entries are ``<sha256 of content>-<settings key>.mp4`` plus a ``.json`` sidecar with
    the source summary. Both are written to temporary names and renamed into place (the video
    last), so a killed run never leaves an entry that looks complete.
    """
    path = check_video_path(path)
    settings = settings or CanonicalSettings()
    settings.validate()
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{file_sha256(path)}-{settings.cache_key()}"
    video_path, meta_path = cache_dir / f"{stem}.mp4", cache_dir / f"{stem}.json"
    if video_path.exists() and meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text())
            return CanonicalVideo(video_path, StreamInfo(**meta["source"]), settings, meta["decode_errors"])
        except (ValueError, KeyError, TypeError):
            pass  # a damaged or foreign sidecar: transcode again and replace the entry

    # A SIGKILLed transcode cannot clean up after itself: its successor does.
    remove_orphans(cache_dir, "*.partial")
    remove_orphans(cache_dir, ".tmp-*")  # sidecars of earlier versions
    remove_orphans(cache_dir, ".*.tmp")  # sidecars of ``atomic_write_text`` (pid in the name)
    partial = video_path.with_suffix(f".{os.getpid()}.partial")
    source, errors = _encode_canonical(path, settings, partial, progress)
    atomic_write_text(meta_path, json.dumps({"source": source.to_dict(), "decode_errors": errors}))
    # The sidecar is written first; the video's rename below is what completes the entry.
    os.replace(partial, video_path)
    return CanonicalVideo(video_path, source, settings, errors)


def _rotation_filters(stream, first_frame) -> list[tuple[str, str]]:
    """Filters that apply display-matrix rotation, as the ffmpeg command line does."""
    rotation = getattr(first_frame, "rotation", 0) or 0
    theta = round(-rotation) % 360  # ffmpeg's get_rotation(): counter-clockwise → clockwise
    return {
        90: [("transpose", "clock")],
        180: [("hflip", ""), ("vflip", "")],
        270: [("transpose", "cclock")],
    }.get(theta, [])


def _build_graph(stream, first_frame, settings: CanonicalSettings):
    graph = av.filter.Graph()
    chain = [graph.add_buffer(template=stream)]
    specs = _rotation_filters(stream, first_frame) + [
        ("fps", f"fps={settings.fps}"),  # constant frame rate from any (variable) input rate
        ("scale", f"{settings.width}:{settings.height}"),
        ("format", "yuv420p"),
    ]
    for name, args in specs:
        chain.append(graph.add(name, args))
    chain.append(graph.add("buffersink"))
    for a, b in zip(chain, chain[1:], strict=False):
        a.link_to(b)
    graph.configure()
    return graph


def _open_encoder(output, settings: CanonicalSettings):
    stream = output.add_stream(
        "mpeg4",
        rate=settings.fps,
        options={
            "g": str(settings.gop),
            "bf": "0",  # no B-frames: every P-frame depends on the past only
            "sc_threshold": "1000000000",  # no scene-cut I-frames: I-frames exactly every GOP
            "qmin": str(settings.quantizer),  # pinned quality (qscale has no effect via PyAV)
            "qmax": str(settings.quantizer),
        },
    )
    stream.width, stream.height, stream.pix_fmt = settings.width, settings.height, "yuv420p"
    stream.time_base = Fraction(1, settings.fps)
    stream.codec_context.thread_count = 1  # slice threading would change the bitstream per machine
    return stream


def _encode_canonical(path, settings, partial, progress) -> tuple[StreamInfo, int]:
    container, stream = open_video_stream(path)
    try:
        # Everything read from ``stream`` must happen before ``container.close()``: PyAV's stream
        # objects point into the container's memory, and reading one afterwards is a use after
        # free (a one-frame MPEG-TS crashed the process with SIGSEGV that way).
        return _encode_open(container, stream, path, settings, partial, progress)
    finally:
        _quiesce_decoder(stream)
        container.close()


def _quiesce_decoder(stream) -> None:
    """Let the decoder's frame threads finish before the decoder is freed.

    PyAV frees a decoder holding the GIL and waits for its threads. A thread interrupted mid-frame
    (Ctrl-C, SIGTERM) may be logging an error through PyAV's Python log callback, waiting for that
    same GIL: the process hung forever. ``flush_buffers`` waits for the threads without the GIL;
    by then the C log callback is back (``_encode_open`` restored the level), so they finish.
    """
    try:
        stream.codec_context.flush_buffers()
    except av.error.FFmpegError:
        pass


def _encode_open(container, stream, path, settings, partial, progress) -> tuple[StreamInfo, int]:
    from tqdm import tqdm

    stream.thread_type = "AUTO"  # source decoding only: MVs come from the canonical stream
    source = _SourceCounter(stream, path)
    bar = tqdm(
        total=stream.frames or None,
        unit="frame",
        desc=f"transcode {path.name}",
        disable=not progress,
        leave=False,
    )
    graph = encoder = None
    log_level = av.logging.get_level()
    av.logging.set_level(av.logging.ERROR)  # count decoder errors instead of printing them
    try:
        with av.logging.Capture(local=False) as logs, av.open(str(partial), "w", format="mp4") as output:
            for frame in _source_frames(container, stream, source):
                if graph is None:
                    graph = _build_graph(stream, frame, settings)
                    encoder = _open_encoder(output, settings)
                signals.check()
                graph.push(frame)
                _drain(graph, encoder, output, source, settings.fps)
                bar.update(1)
            if graph is None:
                raise CopeInputError(
                    f"{path}: no decodable video frames ({source.lost_packets} corrupt packets)"
                )
            graph.push(None)
            _drain(graph, encoder, output, source, settings.fps)
            for packet in encoder.encode(None):  # type: ignore[union-attr]  # opened with the graph
                output.mux(packet)
        if not source.encoded:  # the muxer never started: no file was written at all
            raise CopeInputError(f"{path}: no frame has a usable timestamp ({source.frames} decoded)")
    except BaseException:
        partial.unlink(missing_ok=True)  # never leave a half-written stream behind
        raise
    finally:
        av.logging.set_level(log_level)
        bar.close()
    errors = source.lost_packets + source.bad_timestamps
    errors += sum(1 for level, _, _ in logs if level <= av.logging.ERROR)
    return source.info(), errors


def _source_frames(container, stream, counter: _SourceCounter):
    """Every decodable frame of the source, timed so the ``fps`` filter can place it, counted."""
    for frame in _without_time_spikes(_decode_tolerant(container, stream, counter), counter):
        _bound_duration(frame)
        counter.add(frame)
        yield frame


def _decode_tolerant(container, stream, counter: _SourceCounter):
    """Decode every frame that can be decoded; packets FFmpeg rejects are counted and skipped.

    Frames without a timestamp (raw H.264/HEVC elementary streams) get one at the stream's
    nominal rate: the ``fps`` filter drops frames it cannot place in time.
    """
    decoded = 0
    for packet in demux_tolerant(container, stream):
        if packet is None:  # the rest of the file is unreadable: count it, flush the decoder
            counter.lost_packets += 1
        try:
            frames = packet.decode() if packet is not None else stream.codec_context.decode(None)
        except av.error.FFmpegError:  # InvalidDataError and friends: corrupt data
            counter.lost_packets += 1
            continue
        for frame in frames:
            if frame.pts is None:
                counter.stamp(frame, decoded)
            decoded += 1
            yield frame
    # demux() ends with an empty packet, whose decode() flushes the frames the decoder still holds.


def demux_tolerant(container, stream) -> Iterator:
    """``container.demux(stream)``, ending where the container is too damaged to read on.

    FFmpeg can fail mid-file (a bit flip in a size field: "Cannot allocate memory", invalid data).
    What came before is kept, and a final ``None`` tells the caller the rest was unreadable.
    """
    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except av.error.FFmpegError:
            yield None
            return
        yield packet


# A damaged timestamp far ahead of its neighbours makes the ``fps`` filter fill the gap with
# copies: one flipped bit in an MPEG-TS turned 9 frames into 357,915 canonical frames (3.3 hours).
# A frame more than this ahead of the previous one whose successor comes back before it is such
# a spike; the last frame (no successor to judge by) gets the longer allowance below.
MAX_SPIKE_S = 1.0
MAX_LAST_GAP_S = 60.0


def _without_time_spikes(frames, counter: _SourceCounter):
    """Re-time isolated timestamp spikes between their neighbours (counted as damage)."""
    before = pending = None
    for frame in frames:
        if pending is not None:
            if _is_spike(before, pending, frame.time, MAX_SPIKE_S):
                _retime(pending, before, frame.pts, counter)
            yield pending
            before = pending
        pending = frame
    if pending is not None:
        if _is_spike(before, pending, None, MAX_LAST_GAP_S):
            _retime(pending, before, None, counter)
        yield pending


def _is_spike(before, frame, next_time: float | None, limit: float) -> bool:
    if before is None or before.time is None or frame.time is None:
        return False
    ahead = frame.time - before.time > limit
    return ahead and (next_time is None or next_time < frame.time)


def _retime(frame, before, next_pts: int | None, counter: _SourceCounter) -> None:
    step = before.duration or 1
    if next_pts is not None and next_pts > before.pts:
        frame.pts = (before.pts + next_pts) // 2
    else:
        frame.pts = before.pts + step
    counter.bad_timestamps += 1


# The ``fps`` filter repeats the last frame for its whole duration. A damaged header can claim
# hours for it (a bit flip in a MOV turned 6 frames into 131,073 canonical frames), so no frame
# may last longer than this; a slideshow's last slide is then shown for 1 s.
MAX_FRAME_DURATION_S = 1.0


def _bound_duration(frame) -> None:
    if frame.duration and frame.time_base and frame.duration * frame.time_base > MAX_FRAME_DURATION_S:
        frame.duration = int(MAX_FRAME_DURATION_S / frame.time_base)


def _drain(graph, encoder, output, counter, fps: int) -> None:
    while True:
        try:
            frame = graph.pull()
        except (av.error.BlockingIOError, av.error.EOFError, BlockingIOError, EOFError):
            return
        frame.pts = counter.encoded
        frame.time_base = Fraction(1, fps)  # not the stream's: the MP4 muxer changes that one
        # Decoders tag frames with their source type; the encoder would obey a B or I tag.
        frame.pict_type = av.video.frame.PictureType.NONE
        counter.encoded += 1
        for packet in encoder.encode(frame):
            output.mux(packet)


class _SourceCounter:
    """Collects the source ``StreamInfo`` while its frames are decoded for transcoding.

    It copies what it needs from the stream at once and keeps no PyAV object, so the summary
    can never read a closed container.
    """

    def __init__(self, stream, path: Path):
        self.path = path
        self.codec = stream.codec_context.name
        self.width, self.height = stream.codec_context.width, stream.codec_context.height
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        self.fps = float(rate) if rate else 0.0
        # A raw elementary stream's average rate is the demuxer's default (25); the codec's own
        # timing info (guessed_rate) is the better guess when frames carry no timestamps.
        nominal = stream.guessed_rate or stream.average_rate or stream.base_rate
        self.nominal_rate = Fraction(nominal) if nominal else None
        self.types = {"I": 0, "P": 0, "B": 0}
        self.first_time = self.last_time = None
        self.frames = self.encoded = self.lost_packets = self.bad_timestamps = 0

    def stamp(self, frame, index: int) -> None:
        """Give an untimed frame the timestamp of its position ``index`` at the nominal rate."""
        if self.nominal_rate is None or frame.time_base is None:
            raise CopeInputError(f"{self.path}: the video stream has neither timestamps nor a frame rate")
        frame.pts = round(index / (self.nominal_rate * frame.time_base))
        self.fps = float(self.nominal_rate)

    def add(self, frame) -> None:
        self.frames += 1
        self.width, self.height = frame.width, frame.height
        kind = av.video.frame.PictureType(int(frame.pict_type)).name
        # SI/SP (H.264 switching slices) count with their base type; S (MPEG-4 GMC sprite) frames
        # are their own type: they carry global motion, not P-frame block vectors.
        kind = {"SI": "I", "SP": "P", "BI": "B", "NONE": "P"}.get(kind, kind)
        self.types[kind] = self.types.get(kind, 0) + 1
        if frame.time is not None:
            if self.first_time is None:
                self.first_time = frame.time
            self.last_time = frame.time

    def info(self) -> StreamInfo:
        fps = self.fps
        if self.first_time is not None and self.last_time is not None and fps > 0:
            duration = self.last_time - self.first_time + 1.0 / fps
        else:
            duration = self.frames / fps if fps else 0.0
        return StreamInfo(
            codec=self.codec,
            width=self.width,
            height=self.height,
            fps=fps,
            frames=self.frames,
            duration_s=float(duration),
            gops=self.types["I"],
            frame_types={k: int(n) for k, n in self.types.items() if n or k in ("I", "P", "B")},
        )


def sample_video_path() -> Path:
    """The sample video bundled with the package (used by the demo and the docs)."""
    return Path(__file__).resolve().parent.parent / "assets" / "sample.mp4"


__all__ = [
    "CODEC_CHOICES",
    "CanonicalSettings",
    "CanonicalVideo",
    "check_video_path",
    "open_video_stream",
    "transcode",
    "default_cache_dir",
    "sample_video_path",
]
