"""The analytic FLOP model equals torch's FLOP counter on the real modules, at tiny and at 7B size."""

from __future__ import annotations

import pytest
import torch

from cope.eval.flops import (
    LLMSpec,
    ProjectorSpec,
    VideoLMFlopModel,
    VisionSpec,
    clip_plans,
    count_flops,
    delta_encoder_flops,
    prefill_flop_table,
    videolm_flop_model,
)


def test_formulas_equal_the_counter_on_the_real_cope_code_path():
    """Every term, counted on a tiny CopeVideoLM moved to the meta device (nothing is computed)."""
    from cope.model.videolm import tiny_random

    model = tiny_random()
    flops = videolm_flop_model(model)
    meta = model.to("meta")
    frames = torch.zeros(2, 48, 48, 3, dtype=torch.uint8)
    per_frame = flops.vision.flops_per_frame() + flops.projector.flops(flops.vision.tokens)
    assert count_flops(meta.image_tokens, frames) == 2 * per_frame

    mv, residual = torch.zeros(3, 48, 48, 2), torch.zeros(3, 48, 48, 3)
    per_p = flops.delta_flops_per_frame + flops.projector.flops(model.config.layout.delta_tokens)
    assert flops.delta_flops_per_frame > 0
    assert count_flops(meta.delta_tokens, mv, residual) == 3 * per_p

    def prefill(embeds):  # the LLM over the prompt, logits of the last position only
        return meta.lm_head(meta.language_model(inputs_embeds=embeds).last_hidden_state[:, -1:])

    for length in (1, 57):
        embeds = torch.zeros(1, length, meta.hidden_size, device="meta")
        assert count_flops(prefill, embeds) == flops.llm.prefill_flops(length)


def test_paper_7b_formulas_equal_the_counter_on_full_size_modules():
    """SigLIP-so400m (26 layers run), the projector and Qwen2-7B, built on meta at full size."""
    from transformers import (
        LlavaOnevisionConfig,
        Qwen2Config,
        Qwen2ForCausalLM,
        SiglipVisionConfig,
        SiglipVisionModel,
    )
    from transformers.models.llava_onevision.modeling_llava_onevision import LlavaOnevisionMultiModalProjector

    vision = SiglipVisionConfig(
        hidden_size=1152,
        intermediate_size=4304,
        num_hidden_layers=26,
        num_attention_heads=16,
        image_size=384,
        patch_size=14,
        vision_use_head=False,
    )
    text = Qwen2Config(
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        vocab_size=152064,
    )
    with torch.device("meta"):
        tower = SiglipVisionModel(vision)
        projector = LlavaOnevisionMultiModalProjector(
            LlavaOnevisionConfig(vision_config=vision, text_config=text)
        )
        llm = Qwen2ForCausalLM(text)
    pixels = torch.zeros(1, 3, 384, 384, device="meta")
    assert count_flops(tower, pixels, output_hidden_states=True) == VisionSpec().flops_per_frame()
    assert count_flops(projector, torch.zeros(1, 729, 1152, device="meta")) == ProjectorSpec().flops(729)
    ids = torch.zeros(1, 2290, dtype=torch.long, device="meta")
    assert count_flops(llm, ids, logits_to_keep=1) == LLMSpec().prefill_flops(2290)
    # By hand: 729 tokens × (patch 2·588·1152 + 26 layers × (8·1152² + 4·729·1152 + 4·1152·4304)).
    assert VisionSpec().flops_per_frame() == 729 * (
        2 * 588 * 1152 + 26 * (8 * 1152**2 + 4 * 729 * 1152 + 4 * 1152 * 4304)
    )


def test_prefill_flop_table_for_a_64_second_clip():
    plans = clip_plans(64)
    assert {name: plan.visual_tokens for name, plan in plans.items()} == {
        "dense64": 13440,
        "cope_k1": 2240,
        "cope_k2": 3840,
        "cope_k4": 7040,
        "iframes_k1": 1680,
    }
    model = VideoLMFlopModel(
        VisionSpec(), ProjectorSpec(), LLMSpec(), delta_flops_per_frame=10**11, text_tokens=50
    )
    bound = prefill_flop_table(model, plans)
    vit = VisionSpec().flops_per_frame()
    assert bound["dense64"]["vision"] == 64 * vit and bound["cope_k1"]["vision"] == 8 * vit
    assert bound["cope_k1"]["delta"] == 56 * 10**11 and bound["dense64"]["delta"] == 0
    assert bound["cope_k1"]["prompt_tokens"] == 2290
    assert bound["cope_k1"]["llm"] == LLMSpec().prefill_flops(2290)
    k1 = bound["cope_k1"]["reduction_vs_dense64"]
    assert k1 == pytest.approx(1 - bound["cope_k1"]["total"] / bound["dense64"]["total"])
    # More keyframes cost more; dropping the Δ-frames costs least.
    reductions = [
        bound[name]["reduction_vs_dense64"] for name in ("iframes_k1", "cope_k1", "cope_k2", "cope_k4")
    ]
    assert reductions == sorted(reductions, reverse=True) and 0 < reductions[-1]


def test_delta_encoder_flops_count_the_real_module():
    from cope.model.delta import DeltaEncoder, delta_encoder_config

    config = delta_encoder_config("tiny", output_dim=32)
    counted = delta_encoder_flops(config, 64, 96)
    encoder = DeltaEncoder(config)
    assert counted == count_flops(
        encoder.to("meta"), torch.zeros(1, 64, 96, 2, device="meta"), torch.zeros(1, 64, 96, 3, device="meta")
    )
    assert delta_encoder_flops(config, 128, 96) > counted  # grows with the frame
