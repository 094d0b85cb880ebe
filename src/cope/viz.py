"""``cope inspect --plot``: what the codec sees — GOP timeline, a motion field, a residual."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cope.codec.extract import CodecVideo
from cope.codec.primitives import PFrame


def flow_to_rgb(mv: np.ndarray) -> np.ndarray:
    """Optical-flow colours: hue = direction the content moved, saturation = speed (relative)."""
    from matplotlib.colors import hsv_to_rgb

    # The contract's vector points to where the pixel came from; content moved the other way.
    motion = -mv
    angle = (np.arctan2(motion[..., 1], motion[..., 0]) + np.pi) / (2 * np.pi)
    speed = np.hypot(motion[..., 0], motion[..., 1])
    scale = max(float(np.percentile(speed, 99)), 1e-6)
    hsv = np.stack([angle, np.clip(speed / scale, 0, 1), np.ones_like(speed)], axis=-1)
    return hsv_to_rgb(hsv)


def plot_codec_view(video: CodecVideo, out: str | Path, fusion: int = 30, name: str | None = None) -> Path:
    """Draw the canonical stream's GOP timeline and the first GOP's strongest fused P-frame."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plan = video.plan(fusion=fusion, keyframes_per_gop=1)
    first_gop = [e for e in plan.entries if e.gop == plan.gops[0]]
    gop_plan = type(plan)(tuple(first_gop))
    # P-frames keep their RGB: each is the next one's reference.
    entries = list(video.entries(gop_plan, with_rgb=True))
    pframes = [e for e in entries if isinstance(e, PFrame)]
    reference = {e.index: e.rgb for e in entries}

    fig = plt.figure(figsize=(14, 8), constrained_layout=True)
    grid = fig.add_gridspec(2, 3, height_ratios=[1, 3])
    _draw_timeline(fig.add_subplot(grid[0, :]), video, plan, fusion)
    if not pframes:
        ax = fig.add_subplot(grid[1, :])
        ax.text(
            0.5, 0.5, "no fused P-frame in the first GOP (video shorter than the fusion window)", ha="center"
        )
        ax.axis("off")
    else:
        strongest = max(pframes, key=lambda p: float(np.abs(p.mv).mean()))
        _draw_frame(fig.add_subplot(grid[1, 0]), strongest, reference.get(strongest.ref_index))
        _draw_motion(fig.add_subplot(grid[1, 1]), strongest, fusion)
        _draw_residual(fig, fig.add_subplot(grid[1, 2]), strongest)
    fig.suptitle(f"{name or video.reader.path.name}: what the codec sees", fontsize=13)
    out = Path(out)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def _draw_timeline(ax, video: CodecVideo, plan, fusion: int) -> None:
    types = np.array(video.scan.frame_types)
    idx = np.arange(len(types))
    ax.vlines(idx[types == "P"], 0, 0.4, color="0.75", linewidth=0.5, label="P-frame (codec)")
    ax.vlines(idx[types == "I"], 0, 1.0, color="tab:red", linewidth=2, label="I-frame / GOP start")
    kept_i = [e.index for e in plan.entries if e.kind == "I"]
    kept_p = [e.index for e in plan.entries if e.kind == "P"]
    ax.plot(kept_i, np.full(len(kept_i), 1.1), "v", color="tab:red", label="image tokens (210)")
    ax.plot(
        kept_p, np.full(len(kept_p), 0.55), "v", color="tab:blue", label=f"Δ-tokens (10), fused over {fusion}"
    )
    ax.set_ylim(0, 1.35)
    ax.set_yticks([])
    ax.set_xlabel("frame (canonical stream, display order)")
    ax.set_title(
        f"{video.info.frames} frames, {video.info.gops} GOPs — cope_k1: {plan.visual_tokens} visual tokens "
        f"({plan.rgb_frames} RGB + {plan.delta_frames} Δ)"
    )
    ax.legend(loc="upper right", fontsize=8, ncol=4)


def _draw_frame(ax, pframe: PFrame, reference: np.ndarray | None) -> None:
    if reference is not None:
        ax.imshow(reference)
    ax.set_title(f"reference frame {pframe.ref_index}")
    ax.axis("off")


def _draw_motion(ax, pframe: PFrame, fusion: int) -> None:
    mv = pframe.mv
    ax.imshow(flow_to_rgb(mv))
    step = 16
    ys, xs = np.mgrid[step // 2 : mv.shape[0] : step, step // 2 : mv.shape[1] : step]
    motion = -mv[ys, xs]  # draw where the content went
    ax.quiver(xs, ys, motion[..., 0], motion[..., 1], angles="xy", scale_units="xy", scale=1, width=0.003)
    ax.set_title(f"motion of frame {pframe.index} since {pframe.ref_index} (s={fusion})")
    ax.axis("off")


def _draw_residual(fig, ax, pframe: PFrame) -> None:
    magnitude = np.abs(pframe.residual.astype(np.float32)).mean(axis=-1)
    image = ax.imshow(magnitude, cmap="magma", vmin=0, vmax=max(float(np.percentile(magnitude, 99.5)), 1.0))
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.02, label="|residual| (mean over RGB)")
    ax.set_title(f"residual, mean |r| = {magnitude.mean():.2f}")
    ax.axis("off")
