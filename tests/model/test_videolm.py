"""CopeVideoLM on a tiny random LLaVA-OneVision model: layout equivalence, generation, chat, training."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from cope.codec.extract import open_video
from cope.codec.primitives import IFrame
from cope.errors import CopeInputError
from cope.model.inputs import VisualInput
from cope.model.videolm import CopeVideoLM, GenerationConfig, IncrementalDetokenizer, tiny_random
from cope.model.videolm.generation import _last_logits, new_cache
from cope.model.vision import frames_to_pixels
from cope.plan import dense_frame_indices

QUESTION = "what is moving ?"
# 56 px / 8 px patches = a 7 × 7 grid (odd, like SigLIP's 27) → pooled 4 × 4 + 4 newlines = 20.
IMAGE_TOKENS, DELTA_TOKENS = 20, 10


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    # GOP 30, fusion 5 → 6 slots per GOP; K = 2 → I, P, P, I, P, P. Small chunk sizes exercise the
    # chunked vision / Δ-encoder calls.
    return tiny_random(
        image_size=56,
        canonical_side=48,
        canonical_gop=30,
        fusion=5,
        keyframes_per_gop=2,
        vision_batch_size=4,
        delta_batch_size=3,
    )


@pytest.fixture(scope="module")
def video(model, integer_clip, cache_dir):
    return open_video(integer_clip, model.config.canonical, cache_dir=cache_dir)  # 61 frames


@pytest.fixture(scope="module")
def encoded(model, video):
    return model.encode_video(video, "cope")


def chatml(*turns: tuple[str, str], generation_prompt: bool = True) -> str:
    """LLaVA-Video's qwen_1_5 conversation, written out by hand."""
    text = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    for role, content in turns:
        text += f"<|im_start|>{role}\n{content}<|im_end|>\n"
    return text + ("<|im_start|>assistant\n" if generation_prompt else "")


def reference_embeds(model, text: str, visual: torch.Tensor) -> torch.Tensor:
    """Tokenise, embed, and put ``visual`` where the one <video> token is: (1, L − 1 + T, D)."""
    ids = model.tokenizer(text, add_special_tokens=False).input_ids
    at = ids.index(model.tokenizer.convert_tokens_to_ids("<video>"))
    embed = model.base.get_input_embeddings()
    before, after = embed(torch.tensor(ids[:at])), embed(torch.tensor(ids[at + 1 :]))
    return torch.cat([before, visual, after])[None]


def greedy_uncached(model, embeds: torch.Tensor, max_new_tokens: int) -> list[int]:
    """Greedy decoding that re-runs the full LLaVA forward over the whole sequence every step."""
    tokens = []
    with torch.inference_mode():
        for _ in range(max_new_tokens):
            token = int(model.base(inputs_embeds=embeds).logits[0, -1].argmax())
            if token in model.stop_token_ids:
                break
            tokens.append(token)
            embeds = torch.cat([embeds, model.base.get_input_embeddings()(torch.tensor([[token]]))], dim=1)
    return tokens


def split_blocks(model, encoded):
    """The (T, D) sequence cut into one block per plan entry: [(entry, block)]."""
    layout, blocks, start = model.config.layout, [], 0
    for entry in encoded.plan.entries:
        size = layout.iframe_tokens if entry.kind == "I" else layout.pframe_tokens
        blocks.append((entry, encoded.embeds[start : start + size]))
        start += size
    assert start == encoded.embeds.shape[0]
    return blocks


def test_dense_mode_equals_llava_video_grid_reference(model, video):
    encoded = model.encode_video(video, "dense", dense_frames=8)
    indices = dense_frame_indices(61, 8)
    assert [e.index for e in encoded.plan.entries] == indices == [0, 8, 17, 25, 34, 42, 51, 60]
    frames = np.stack([rgb for _, rgb in video.read_frames(indices)])

    # Reference: transformers' own LLaVA-OneVision video features (tower layer −2 → projector →
    # 2×2 bilinear pooling; it appends a single newline per video, which we drop) and then the
    # grid layout written out: after every row of 4 pooled tokens, the learned image_newline.
    with torch.inference_mode():
        pixels = frames_to_pixels(frames, 56)[None]  # (1, 8, 3, 56, 56)
        hf = model.base.model.get_video_features(
            pixel_values_videos=pixels, vision_feature_layer=-2, vision_feature_select_strategy="full"
        ).pooler_output[0, :-1]
        pooled = hf.view(8, 4, 4, -1)
        rows = []
        for frame in pooled:
            for row in frame:
                rows += [row, model.image_newline[None]]
        visual = torch.cat(rows)
        assert visual.shape == (8 * IMAGE_TOKENS, 64)
        assert torch.equal(encoded.embeds, visual)

        prompt = model.build_prompt(encoded, QUESTION)
        assert prompt.text == chatml(("user", f"<video>\n{QUESTION}"))
        expected = reference_embeds(model, prompt.text, visual)
        assert torch.equal(prompt.inputs_embeds, expected)
        assert prompt.prompt_tokens == expected.shape[1] and prompt.visual_tokens == 160

        reference_logits = model.base(inputs_embeds=expected).logits[0, -1]
        ours = _last_logits(model, new_cache(model), prompt.inputs_embeds)
    torch.testing.assert_close(ours, reference_logits.float(), rtol=1e-5, atol=1e-5)


def test_cope_sequence_length_and_blocks(model, video, encoded):
    layout = model.config.layout
    assert (layout.iframe_tokens, layout.pframe_tokens) == (IMAGE_TOKENS, DELTA_TOKENS)
    # GOPs [0, 30) [30, 60) [60]: I 0, P 5, P 10, I 15, P 20, P 25, … and the last GOP's I 60.
    kinds = "".join(e.kind for e in encoded.plan.entries)
    assert kinds == "IPPIPP" * 2 + "I"
    assert encoded.visual_tokens == encoded.plan.tokens(layout) == 5 * IMAGE_TOKENS + 8 * DELTA_TOKENS == 180

    prompt = model.build_prompt(encoded, QUESTION)
    text_ids = model.tokenizer(prompt.text, add_special_tokens=False).input_ids
    assert prompt.prompt_tokens == prompt.inputs_embeds.shape[1] == 180 + len(text_ids) - 1

    blocks = split_blocks(model, encoded)
    keyframes = [e.index for e, _ in blocks if e.kind == "I"]
    with torch.inference_mode():
        dense = model.image_tokens(np.stack([rgb for _, rgb in video.read_frames(keyframes)]))
        entries = [e for e in video.entries(encoded.plan) if not isinstance(e, IFrame)]
        deltas = model.delta_tokens(
            torch.from_numpy(np.stack([e.mv for e in entries])),
            torch.from_numpy(np.stack([e.residual for e in entries]).astype(np.float32)),
        )
    image_blocks = [block for e, block in blocks if e.kind == "I"]
    delta_blocks = [block for e, block in blocks if e.kind == "P"]
    for ours, reference in zip(image_blocks, dense, strict=True):
        assert torch.equal(ours, reference)  # bit-identical to the dense path for the same frames
    for ours, reference in zip(delta_blocks, deltas, strict=True):
        assert torch.equal(ours, reference)
        assert torch.equal(ours[4], model.image_newline) and torch.equal(ours[9], model.image_newline)
    assert not torch.equal(delta_blocks[0], delta_blocks[1])


def test_iframes_only_and_delta_zero_modes(model, video, encoded):
    blocks = split_blocks(model, encoded)
    image_blocks = [block for e, block in blocks if e.kind == "I"]

    iframes_only = model.encode_video(video, "iframes-only")
    assert iframes_only.plan.delta_frames == 0 and iframes_only.visual_tokens == 5 * IMAGE_TOKENS
    assert torch.equal(iframes_only.embeds, torch.cat(image_blocks))

    zeroed = model.encode_video(video, "delta-zero")
    assert zeroed.plan == encoded.plan and zeroed.delta_s == 0.0
    for (entry, ours), (_, theirs) in zip(split_blocks(model, zeroed), blocks, strict=True):
        if entry.kind == "I":
            assert torch.equal(ours, theirs)
        else:  # the 8 projected Δ-tokens are zero; the 2 row newlines stay
            grid = ours.view(2, 5, -1)
            assert torch.count_nonzero(grid[:, :4]) == 0
            assert torch.equal(grid[:, 4], model.image_newline.expand(2, -1))


def test_cached_greedy_generation_equals_uncached(model, encoded):
    prompt = model.build_prompt(encoded, QUESTION)
    stream = model.stream(prompt, GenerationConfig(max_new_tokens=12))
    pieces = list(stream)
    answer = stream.answer
    reference = greedy_uncached(model, prompt.inputs_embeds, 12)
    assert len(set(reference)) >= 3  # the random model's answer depends on its context
    assert answer.token_ids == reference
    assert answer.finish_reason == "length" and answer.new_tokens == 12
    assert "".join(pieces) == answer.text == model.tokenizer.decode(reference, skip_special_tokens=True)
    t = answer.timings
    assert t.vision_s == encoded.vision_s > 0 and t.delta_s == encoded.delta_s > 0 and t.prefill_s > 0
    assert t.ttft_s == pytest.approx(t.vision_s + t.delta_s + t.prefill_s)
    assert t.e2e_s == pytest.approx(t.ttft_s + t.decode_s) and t.decode_s > 0
    assert answer.prompt_tokens == prompt.prompt_tokens and answer.visual_tokens == 180

    # Stop tokens end the answer without being part of it.
    original = model.stop_token_ids
    model.stop_token_ids = original | {reference[3]}
    try:
        stopped = model.generate(prompt, GenerationConfig(max_new_tokens=12))
        through = model.generate(prompt, GenerationConfig(max_new_tokens=12, ignore_eos=True))
    finally:
        model.stop_token_ids = original
    assert stopped.token_ids == reference[: reference.index(reference[3])]
    assert stopped.finish_reason == "stop"
    assert (
        through.token_ids == reference and through.finish_reason == "length"
    )  # `cope bench` decodes through EOS

    # Sampling with a vanishing nucleus keeps only the argmax: it must reproduce greedy decoding.
    nucleus = model.generate(prompt, GenerationConfig(max_new_tokens=12, temperature=1.0, top_p=1e-6, seed=0))
    assert nucleus.token_ids == reference
    sampled = [
        model.generate(prompt, GenerationConfig(max_new_tokens=8, temperature=1.5, seed=3)).token_ids
        for _ in "ab"
    ]
    assert sampled[0] == sampled[1]


def test_chat_reuses_the_cache_and_matches_recomputation(model, encoded, monkeypatch):
    prefill_lengths = []
    hook = model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: prefill_lengths.append(kwargs["inputs_embeds"].shape[1]),
        with_kwargs=True,
    )

    def no_video_work(*args):
        raise AssertionError("a chat turn re-encoded the video")

    try:
        session = model.chat(encoded, GenerationConfig(max_new_tokens=6))
        first = session.ask(QUESTION)
        cached_after_first = session.cached_tokens
        monkeypatch.setattr(model, "image_tokens", no_video_work)
        monkeypatch.setattr(model, "delta_tokens", no_video_work)
        prefill_lengths.clear()
        second = session.ask("which direction ?")
    finally:
        hook.remove()
    # Turn 2 prefilled only what was not cached yet: the last answer token, <|im_end|>, the new
    # user turn and the assistant header — not the 180 visual positions again.
    assert prefill_lengths[0] == second.prompt_tokens - cached_after_first < 20
    assert second.timings.vision_s == second.timings.delta_s == 0.0

    # From scratch: render the whole conversation as text, tokenise it, splice the video, decode.
    assert model.tokenizer(first.text, add_special_tokens=False).input_ids == first.token_ids
    text = chatml(("user", f"<video>\n{QUESTION}"), ("assistant", first.text), ("user", "which direction ?"))
    embeds = reference_embeds(model, text, encoded.embeds)
    assert second.prompt_tokens == embeds.shape[1]
    assert second.token_ids == greedy_uncached(model, embeds, 6)
    assert session.messages[2:] == [
        {"role": "user", "content": "which direction ?"},
        {"role": "assistant", "content": second.text},
    ]


def test_incremental_detokenizer_multibyte_and_metaspace():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = ["the ball moves left", "zürich café — 東京 日本語 ✓", "naïve façade 🎥 video"] * 5
    text = "café 東京 moves 🎥 ✓ façade"
    for pre, dec in (
        (pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()),
        (pre_tokenizers.Metaspace(), decoders.Metaspace()),
    ):
        backend = Tokenizer(
            models.BPE(unk_token="<unk>", byte_fallback=isinstance(pre, pre_tokenizers.Metaspace))
        )
        backend.pre_tokenizer, backend.decoder = pre, dec
        alphabet = pre_tokenizers.ByteLevel.alphabet() if isinstance(pre, pre_tokenizers.ByteLevel) else []
        byte_tokens = [f"<0x{b:02X}>" for b in range(256)] if not alphabet else []
        trainer = trainers.BpeTrainer(
            vocab_size=300, special_tokens=["<unk>", *byte_tokens], initial_alphabet=alphabet
        )
        backend.train_from_iterator(corpus, trainer)
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")
        ids = tokenizer(text, add_special_tokens=False).input_ids
        detokenizer = IncrementalDetokenizer(tokenizer)
        pieces = [detokenizer.push(i) for i in ids] + [detokenizer.flush()]
        assert "".join(pieces) == tokenizer.decode(ids) == text
        assert "" in pieces[:-1]  # some tokens were held back: part of a multi-byte character
        assert not any("\ufffd" in p for p in pieces)


def sample_with_answer(model, visual: VisualInput, answer: str) -> tuple[torch.Tensor, torch.Tensor]:
    prompt = chatml(("user", f"<video>\n{QUESTION}"))
    ids = model.tokenizer(prompt + answer + "<|im_end|>", add_special_tokens=False).input_ids
    prompt_length = len(model.tokenizer(prompt, add_special_tokens=False).input_ids)
    labels = [-100] * prompt_length + ids[prompt_length:]
    return torch.tensor(ids), torch.tensor(labels)


def test_training_forward_loss_masks_and_gradients(model, video, encoded):
    dense_frames = [IFrame(i, 0.0, 0, rgb) for i, rgb in video.dense_frames(3)]
    visuals = [
        VisualInput.from_entries(video.entries(encoded.plan), 48, 48, video.info.fps),
        VisualInput.from_entries(dense_frames, 48, 48, video.info.fps),
    ]
    samples = [
        sample_with_answer(model, visuals[0], "the ball moves left"),
        sample_with_answer(model, visuals[1], "red"),
    ]
    ids, labels = [s[0] for s in samples], [s[1] for s in samples]
    batch = model.training_batch(ids, labels, visuals)
    lengths = [len(ids[0]) - 1 + 180, len(ids[1]) - 1 + 3 * IMAGE_TOKENS]
    assert batch.inputs_embeds.shape == (2, max(lengths), 64)
    assert batch.attention_mask.sum(1).tolist() == lengths
    supervised = [(row != -100).sum().item() for row in batch.labels]
    assert supervised == [(lab != -100).sum().item() for lab in labels] == [5, 2]  # answer words + <|im_end|>
    assert (batch.labels[1, lengths[1] :] == -100).all()

    out = model(ids, labels, visuals)
    # Reference: each sample alone through the full LLaVA forward, summed CE / supervised tokens.
    total = 0.0
    for sample_ids, sample_labels, visual in zip(ids, labels, visuals, strict=True):
        embeds = model.splice(sample_ids, model.embed_visual(visual))[None]
        at = int((sample_ids == model.placeholder_id).nonzero())
        full = torch.cat(
            [
                sample_labels[:at],
                torch.full((embeds.shape[1] - len(sample_ids) + 1,), -100),
                sample_labels[at + 1 :],
            ]
        )
        logits = model.base(inputs_embeds=embeds).logits[0, :-1]
        total = total + torch.nn.functional.cross_entropy(
            logits, full[1:], reduction="sum", ignore_index=-100
        )
    assert out.num_tokens == 7
    torch.testing.assert_close(out.loss, total / 7, rtol=1e-5, atol=1e-5)

    model.zero_grad(set_to_none=True)
    out.loss.backward()
    try:
        assert all(p.grad is None for p in model.vision_tower.parameters())  # frozen by default
        assert model.delta_encoder.motion_compressor.queries.grad is not None
        assert model.projector.linear_1.weight.grad is not None and model.image_newline.grad is not None
    finally:
        model.zero_grad(set_to_none=True)


def test_stage0_model_without_delta_encoder(video):
    model = tiny_random(
        image_size=56, canonical_side=48, canonical_gop=30, fusion=5, with_delta_encoder=False
    )
    dense = VisualInput.from_entries(
        [IFrame(i, 0.0, 0, rgb) for i, rgb in video.dense_frames(2)], 48, 48, video.info.fps
    )
    ids, labels = sample_with_answer(model, dense, "red")
    assert model([ids], [labels], [dense]).num_tokens == 2
    with pytest.raises(CopeInputError, match="no Δ-encoder"):
        model.encode_video(video, "cope", fusion=5)
    assert model.encode_video(video, "delta-zero", fusion=5, keyframes_per_gop=1).plan.delta_frames == 10


def test_save_and_load(model, video, encoded, tmp_path):
    checkpoint = model.save_pretrained(tmp_path / "cope-ckpt")
    assert sorted(p.name for p in checkpoint.iterdir()) == [
        "base",
        "config.json",
        "delta_encoder.safetensors",
    ]
    with pytest.raises(CopeInputError, match="already exists"):
        model.save_pretrained(checkpoint)
    loaded = CopeVideoLM.from_pretrained(checkpoint)
    assert loaded.config == model.config and loaded.name == str(checkpoint)
    assert torch.equal(loaded.encode_video(video, "cope").embeds, encoded.embeds)

    # A bare LLaVA-OneVision directory loads as a Δ-free VideoLM whose layout follows its tower.
    bare = tmp_path / "bare"
    model.base.save_pretrained(bare)
    model.tokenizer.save_pretrained(bare)
    base_only = CopeVideoLM.from_pretrained(bare)
    assert base_only.delta_encoder is None and base_only.config.mode == "dense"
    assert base_only.config.layout.image_side == 4 and base_only.config.canonical.width == 64


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("/nonexistent/model", "no such model directory"),
        ("file", "not a model directory"),
        ("empty", "no config.json"),
        ("other", "neither a CoPE checkpoint nor a LLaVA-OneVision model"),
    ],
)
def test_bad_model_paths(tmp_path, name, message):
    (tmp_path / "file").write_text("x")
    (tmp_path / "empty").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text('{"model_type": "bert"}')
    path = name if name.startswith("/") else str(tmp_path / name)
    with pytest.raises(CopeInputError, match=message):
        CopeVideoLM.from_pretrained(path)


def test_hub_ids_resolve_to_cope_or_base_checkpoints(tmp_path, monkeypatch):
    import huggingface_hub

    from cope.model.videolm.loading import resolve_checkpoint

    repos = {"org/cope-model": tmp_path / "cope", "llava-hf/LLaVA-Video-7B-Qwen2-hf": tmp_path / "llava"}
    (tmp_path / "cope").mkdir()
    (tmp_path / "cope" / "config.json").write_text(
        '{"cope_version": 1, "base_model": "llava-hf/LLaVA-Video-7B-Qwen2-hf"}'
    )
    (tmp_path / "llava").mkdir()
    (tmp_path / "llava" / "config.json").write_text('{"model_type": "llava_onevision"}')

    downloads = []

    def fake_snapshot(repo_id, allow_patterns=None):
        downloads.append((repo_id, allow_patterns))
        if repo_id not in repos:
            raise OSError("Repository Not Found")
        return str(repos[repo_id])

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    cope = resolve_checkpoint("org/cope-model")
    assert (cope.cope_dir, cope.base_model) == (tmp_path / "cope", "llava-hf/LLaVA-Video-7B-Qwen2-hf")
    base = resolve_checkpoint("llava-hf/LLaVA-Video-7B-Qwen2-hf")
    assert (base.cope_dir, base.base_model) == (None, "llava-hf/LLaVA-Video-7B-Qwen2-hf")
    # Only config.json is fetched to tell the kinds apart; the whole repo only for a CoPE checkpoint.
    assert downloads == [
        ("org/cope-model", ["config.json"]),
        ("org/cope-model", None),
        ("llava-hf/LLaVA-Video-7B-Qwen2-hf", ["config.json"]),
    ]
    with pytest.raises(CopeInputError, match="org/missing: not a local directory, and the Hugging Face Hub"):
        resolve_checkpoint("org/missing")


def test_config_refuses_unknown_fields_and_other_versions():
    from cope.model.videolm import CopeConfig

    data = CopeConfig().to_dict()
    with pytest.raises(CopeInputError, match="x.json: unknown CopeConfig fields: fusoin"):
        CopeConfig.from_dict({**data, "fusoin": 10}, "x.json")
    with pytest.raises(CopeInputError, match="cope_version 2 is not supported"):
        CopeConfig.from_dict({**data, "cope_version": 2})
    with pytest.raises(CopeInputError, match="mode must be one of"):
        CopeConfig.from_dict({**data, "mode": "fast"})


def test_paper_7b_config():
    from cope.model.videolm import QWEN_1_5_CHAT_TEMPLATE, CopeConfig, paper_7b_config

    config = paper_7b_config()
    assert config.base_model == "llava-hf/LLaVA-Video-7B-Qwen2-hf"
    assert (config.layout.iframe_tokens, config.layout.pframe_tokens) == (210, 10)
    assert (config.canonical.width, config.canonical.fps, config.canonical.gop) == (384, 30, 240)
    assert (config.fusion, config.max_gops, config.dense_frames) == (30, 64, 64)
    assert config.delta_encoder["output_dim"] == 1152 and config.chat_template == QWEN_1_5_CHAT_TEMPLATE
    assert CopeConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_system_turn(model, encoded):
    prompt = model.build_prompt(encoded, QUESTION, system="describe the video")
    assert prompt.text == (
        "<|im_start|>system\ndescribe the video<|im_end|>\n"
        f"<|im_start|>user\n<video>\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n"
    )
    session = model.chat(encoded, GenerationConfig(max_new_tokens=4), system="describe the video")
    assert (
        session.ask(QUESTION).token_ids
        == model.generate(prompt, GenerationConfig(max_new_tokens=4)).token_ids
    )
    assert session.messages[0]["content"] == f"<video>\n{QUESTION}"


def test_min_tokens_holds_the_end_tokens_back():
    """With the first greedy token made an end token, the answer is empty; min_tokens=3 forbids the
    end tokens for three tokens (and never emits one), then lets the model stop again."""
    from cope.model.videolm import GenerationConfig, tiny_random

    model = tiny_random(seed=5)
    prompt = model.build_prompt(
        torch.randn(4, model.hidden_size, generator=torch.Generator().manual_seed(1)), "what ?"
    )
    first = model.generate(prompt, GenerationConfig(max_new_tokens=4)).token_ids[0]
    model.stop_token_ids = model.stop_token_ids | {first}
    stopped = model.generate(prompt, GenerationConfig(max_new_tokens=4))
    assert (stopped.token_ids, stopped.finish_reason) == ([], "stop")
    held = model.generate(prompt, GenerationConfig(max_new_tokens=8, min_tokens=3))
    assert len(held.token_ids) >= 3 and not set(held.token_ids[:3]) & model.stop_token_ids
    with pytest.raises(CopeInputError, match="min_tokens must be between 0 and max_new_tokens"):
        GenerationConfig(max_new_tokens=2, min_tokens=3)


def test_a_batch_embeds_in_one_pass_like_each_video_alone(clip_dir):
    """embed_visuals (one tower pass, one Δ-encoder pass for the whole batch) equals embed_visual per
    video, for mixed plans: keyframes + Δ-frames, keyframes only, and Δ-zeroed."""
    from cope.codec import open_video
    from cope.model.inputs import VisualInput
    from cope.model.videolm import tiny_random
    from tests.clips import write_translation_clip

    model = tiny_random(seed=2)
    settings = model.config.canonical
    visuals = []
    for k, (dx, frames) in enumerate([(1.0, 61), (-2.0, 31)]):
        video = open_video(write_translation_clip(clip_dir / f"batch{k}.mp4", frames, dx), settings)
        plan = video.plan(fusion=5, keyframes_per_gop=2 - k)
        visuals.append(
            VisualInput.from_entries(video.entries(plan), settings.height, settings.width, settings.fps)
        )
    visuals.append(visuals[0].without_deltas())
    for zero in (False, True):
        with torch.inference_mode():
            batched = model.embed_visuals(visuals, zero_deltas=zero)
            alone = [model.embed_visual(v, zero_deltas=zero) for v in visuals]
        assert [b.shape for b in batched] == [a.shape for a in alone]
        for b, a in zip(batched, alone, strict=True):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def with_time_words(model) -> CopeVideoLM:
    """The same weights with ``CopeConfig.time_words`` on."""
    config = replace(model.config, time_words=True)
    return CopeVideoLM(config, model.base, model.tokenizer, model.delta_encoder, name="timed")


def test_time_words_stamp_each_block_with_its_seconds(model):
    timed = with_time_words(model)
    with torch.inference_mode():
        digit = {
            d: timed.embed_text(
                timed.tokenizer(d, add_special_tokens=False, return_tensors="pt").input_ids[0]
            )[0]
            for d in "0125"
        }
        stamps = timed.time_stamps(("I", "P", "P", "I"), (0.0, 1.0, 2.5, 12.0))
    expected = [digit["0"]] * IMAGE_TOKENS
    expected += [(digit["0"] + digit["1"]) / 2] * DELTA_TOKENS  # a Δ-frame: its start and its end
    expected += [(digit["1"] + digit["2"]) / 2] * DELTA_TOKENS  # 2.5 s is second 2
    expected += [(digit["1"] + digit["2"]) / 2] * IMAGE_TOKENS  # 12 is written "1 2"
    torch.testing.assert_close(stamps, torch.stack(expected))


def test_time_words_streamed_encoding_equals_the_training_embedding(model, video, encoded):
    """encode_video (chunked: 4 frames / 3 Δ-frames per call, the start of a Δ-frame carried over)
    and embed_visual of the same entries give the same stamped sequence; the stamps are added to
    the plain blocks, and every mode is stamped."""
    timed = with_time_words(model)
    for mode in ("cope", "dense", "iframes-only", "delta-zero"):
        stamped = timed.encode_video(video, mode)
        plain = encoded if mode == "cope" else model.encode_video(video, mode)
        kinds = [e.kind for e in stamped.plan.entries]
        times = [e.index / video.info.fps for e in stamped.plan.entries]
        with torch.inference_mode():
            torch.testing.assert_close(stamped.embeds, plain.embeds + timed.time_stamps(kinds, times))
    with torch.inference_mode():
        visual = VisualInput.from_entries(video.entries(encoded.plan), 48, 48, video.info.fps)
        torch.testing.assert_close(timed.embed_visual(visual), timed.encode_video(video, "cope").embeds)
        with pytest.raises(ValueError, match="time of every visual entry"):
            timed.embed_visual(replace(visual, fps=None))
