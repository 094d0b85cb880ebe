"""Token accounting equals the paper's formula (§3.2, App. C: 210 per RGB frame, 10 per P-frame)."""

import pytest

from cope.plan import (
    IFRAME_TOKENS,
    PFRAME_TOKENS,
    cope_plan,
    dense_frame_indices,
    dense_plan,
    regular_gop_starts,
    select_gops,
    standard_plans,
)


def plan_for(seconds, k, fusion=30, fps=30, gop=240):
    frames = seconds * fps
    return cope_plan(frames, regular_gop_starts(frames, gop), gop, fusion, k)


def test_token_constants():
    assert IFRAME_TOKENS == 210 and PFRAME_TOKENS == 10
    assert dense_plan(10_000).visual_tokens == 13_440


@pytest.mark.parametrize(("k", "rgb", "delta"), [(1, 8, 56), (2, 16, 48), (4, 32, 32)])
def test_64_second_clip_matches_paper_runtime_configs(k, rgb, delta):
    plan = plan_for(64, k)
    assert (plan.rgb_frames, plan.delta_frames) == (rgb, delta)
    assert plan.visual_tokens == 210 * rgb + 10 * delta


@pytest.mark.parametrize("seconds", [8, 64, 96, 512])
def test_tokens_per_full_gop_formula(seconds):
    # (196+14)·K + (8+2)·P per 8-second GOP, K + P = 8 at s = 30
    for k in (1, 2, 4):
        assert plan_for(seconds, k).visual_tokens == (seconds // 8) * (210 * k + 10 * (8 - k))


def test_no_fusion_gop_is_m_plus_239_n():
    plan = cope_plan(240, [0], 240, fusion=1, keyframes_per_gop=1)
    assert (plan.rgb_frames, plan.delta_frames) == (1, 239)
    assert all(e.ref_index == e.index - 1 for e in plan.entries if e.kind == "P")


def test_partial_last_gop_keeps_the_slots_that_fit():
    plan = plan_for(10, 1)  # 300 frames: GOP 0 full, GOP 1 has 60 frames → slots 240, 270
    assert [(e.kind, e.index) for e in plan.entries[-3:]] == [("P", 210), ("I", 240), ("P", 270)]


def test_keyframe_positions_and_references():
    plan = plan_for(8, 4)
    assert [(e.kind, e.index, e.ref_index) for e in plan.entries] == [
        ("I", 0, None),
        ("P", 30, 0),
        ("I", 60, None),
        ("P", 90, 60),
        ("I", 120, None),
        ("P", 150, 120),
        ("I", 180, None),
        ("P", 210, 180),
    ]


def test_gop_cap_samples_gops_uniformly():
    assert select_gops(10) == list(range(10))
    chosen = select_gops(200, 64)
    assert len(chosen) == 64 and chosen[0] == 0 and chosen[-1] == 199
    plan = plan_for(200 * 8, 1)  # 200 GOPs
    assert plan.gops == chosen and plan.rgb_frames == 64 and plan.delta_frames == 64 * 7


def test_one_hour_at_one_fps_is_capped_at_512_seconds_of_gops():
    plan = plan_for(3600, 1)
    assert plan.visual_tokens == 64 * (210 + 7 * 10)


def test_dense_sampling_is_llava_video_linspace():
    assert dense_frame_indices(30) == list(range(30))
    idx = dense_frame_indices(1000)
    assert len(idx) == 64 and idx[0] == 0 and idx[-1] == 999 and idx[1] == 15


@pytest.mark.parametrize(("fusion", "k"), [(7, 1), (30, 3), (30, 16), (0, 1)])
def test_invalid_sampling_is_refused(fusion, k):
    with pytest.raises(ValueError):
        cope_plan(480, [0, 240], 240, fusion, k)


def test_standard_plans_names():
    plans = standard_plans(1920, regular_gop_starts(1920, 240), 240)
    assert list(plans) == ["dense64", "cope_k1", "cope_k2", "cope_k4"]
    assert plans["dense64"].to_dict() == {"visual_tokens": 13440, "rgb_frames": 64, "delta_frames": 0}


def test_token_layout_of_a_smaller_model():
    from cope.plan import PAPER_LAYOUT, TokenLayout

    assert (PAPER_LAYOUT.iframe_tokens, PAPER_LAYOUT.pframe_tokens, PAPER_LAYOUT.delta_tokens) == (210, 10, 8)
    small = TokenLayout(image_side=7)
    plan = plan_for(8, 1)
    assert plan.tokens(small) == 7 * 8 + 7 * 10
    assert plan.tokens(PAPER_LAYOUT) == plan.visual_tokens == 280
