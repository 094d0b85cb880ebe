"""Instruction records, data mixes and ratios, the recipe's sampling, and the dataset (raw and cached)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from cope.codec import CanonicalSettings
from cope.data.cache import CacheSettings
from cope.data.collate import InstructCollator
from cope.data.instruct import (
    InstructDataConfig,
    InstructionDataset,
    MixSource,
    Sampling,
    epoch_indices,
    load_mix,
    load_records,
    normalise_record,
)
from cope.data.preprocess import PreprocessConfig, run_preprocess
from cope.errors import CopeInputError
from cope.plan import cope_plan
from tests.clips import write_translation_clip

SIDE, FRAMES, GOP, FUSION = 64, 50, 20, 5  # 3 GOPs of 4, 4 and 2 slots
CANONICAL = CanonicalSettings(width=SIDE, height=SIDE, gop=GOP)


def llava(ident: str, video: str, question: str = "<image>\nWhat moves?", answer: str = "A square.") -> dict:
    return {
        "id": ident,
        "video": video,
        "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}],
    }


# --- records and mixes --------------------------------------------------------------------------


def test_records_normalise_placeholder_and_roles():
    record = normalise_record(llava("a", "x.mp4"), "f")
    assert record == {
        "id": "a",
        "video": "x.mp4",
        "conversation": [
            {"role": "user", "content": "<video>\nWhat moves?"},
            {"role": "assistant", "content": "A square."},
        ],
    }
    # No placeholder: prepended to the first human turn, as LLaVA does.
    assert (
        normalise_record(llava("b", "x.mp4", "Describe."), "f")["conversation"][0]["content"]
        == "<video>\nDescribe."
    )
    bad = [
        (llava("c", "x.mp4", "<image> and <video>"), "once, in the first human turn"),
        ({**llava("d", "x.mp4"), "conversations": [{"from": "gpt", "value": "hi"}]}, "alternate"),
        ({"id": "e", "conversations": []}, "no 'video'"),
        ({**llava("f", "x.mp4"), "conversations": [{"from": "bot", "value": "hi"}]}, "'from'"),
    ]
    for raw, reason in bad:
        with pytest.raises(CopeInputError, match=reason):
            normalise_record(raw, "file.json[0]")


def test_json_and_jsonl_read_the_same(tmp_path):
    records = [llava(f"r{i}", f"v{i}.mp4") for i in range(3)]
    (tmp_path / "a.json").write_text(json.dumps(records))
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    assert load_records(tmp_path / "a.json") == load_records(tmp_path / "a.jsonl")
    (tmp_path / "bad.jsonl").write_text(json.dumps(records[0]) + "\n{not json\n")
    with pytest.raises(CopeInputError, match="bad.jsonl: not valid JSON"):
        load_records(tmp_path / "bad.jsonl")


def test_mix_yaml_paths_and_errors(tmp_path):
    mix = tmp_path / "mix.yaml"
    mix.write_text("sources:\n  - {path: a.json, video_root: vids, ratio: 0.5}\n  - {path: /abs/b.jsonl}\n")
    assert load_mix(mix) == [
        MixSource(tmp_path / "a.json", tmp_path / "vids", 0.5),
        MixSource(Path("/abs/b.jsonl"), tmp_path, 1.0),
    ]
    for text, reason in [
        ("sources: []\n", "non-empty 'sources'"),
        ("sources:\n  - {path: a.json, ratio: -1}\n", "ratio must be a number"),
        ("sources:\n  - {path: a.json, weight: 2}\n", "unknown keys"),
    ]:
        mix.write_text(text)
        with pytest.raises(CopeInputError, match=reason):
            load_mix(mix)


def test_ratios_whole_passes_plus_a_seeded_fraction():
    one, half, more = epoch_indices([4, 10, 6], [1.0, 0.5, 2.5], seed=7, epoch=0)
    assert one.tolist() == [0, 1, 2, 3]
    assert len(half) == 5 and len(set(half.tolist())) == 5  # a half, no repeats
    assert (
        more[:12].tolist() == list(range(6)) * 2 and len(more) == 12 + 3 and len(set(more[12:].tolist())) == 3
    )
    again = epoch_indices([4, 10, 6], [1.0, 0.5, 2.5], seed=7, epoch=0)
    assert all(np.array_equal(a, b) for a, b in zip([one, half, more], again, strict=True))
    later = [epoch_indices([10], [0.5], seed=7, epoch=e)[0].tolist() for e in range(1, 6)]
    assert any(subset != half.tolist() for subset in later)  # another half in other epochs


# --- sampling -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frames", "gop", "fusion", "k", "cap"), [(50, 20, 5, 2, 64), (730, 240, 30, 4, 64), (1000, 20, 5, 1, 7)]
)
def test_sampling_without_jitter_is_the_codec_plan(frames, gop, fusion, k, cap):
    starts = list(range(0, frames, gop))
    sampling = Sampling(keyframes_per_gop=k, fusion=fusion, max_gops=cap)
    assert sampling.plan(frames, starts, gop) == cope_plan(frames, starts, gop, fusion, k, cap)
    dense = Sampling(keyframes_per_gop="dense", fusion=fusion, max_gops=cap).plan(frames, starts, gop)
    assert dense == cope_plan(frames, starts, gop, fusion, gop // fusion, cap)


def test_jitter_keeps_the_plan_valid_and_is_seeded():
    frames, starts = 2400, list(range(0, 2400, 240))  # 10 GOPs of 8 slots
    sampling = Sampling(keyframes_per_gop=4, fusion=30, max_gops=5, gop_jitter=True, keyframe_jitter=True)
    plans = [sampling.plan(frames, starts, 240, rng=np.random.default_rng(s)) for s in range(6)]
    assert plans[0] == sampling.plan(frames, starts, 240, rng=np.random.default_rng(0))
    assert len({p for p in plans}) > 1
    for plan in plans:
        gops = plan.gops
        assert len(gops) == 5 and all(2 * i <= g < 2 * i + 2 for i, g in enumerate(gops))  # one per stratum
        for gop in gops:
            entries = [e for e in plan.entries if e.gop == gop]
            assert [e.index for e in entries] == list(range(240 * gop, 240 * gop + 240, 30))
            assert entries[0].kind == "I" and sum(e.kind == "I" for e in entries) == 4
            assert all(e.ref_index == e.index - 30 for e in entries if e.kind == "P")
    with pytest.raises(ValueError, match="random generator"):
        sampling.plan(frames, starts, 240)


def test_keyframes_choices_draw_one_codec_plan_per_sample():
    frames, starts = 480, [0, 240]
    sampling = Sampling(fusion=30, keyframes_choices=(1, 2, 4))
    plans = [sampling.plan(frames, starts, 240, rng=np.random.default_rng(s)) for s in range(40)]
    codec_plans = {k: cope_plan(frames, starts, 240, 30, k) for k in (1, 2, 4)}
    assert all(p in codec_plans.values() for p in plans)  # every draw is exactly one K's plan
    assert {p.rgb_frames for p in plans} == {2, 4, 8}  # and every K is drawn
    with pytest.raises(ValueError, match="random generator"):
        sampling.plan(frames, starts, 240)


# --- the dataset ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mix(tmp_path_factory) -> dict:
    """Two record files over four clips; one record points at a missing video."""
    root = tmp_path_factory.mktemp("instruct")
    videos = root / "videos"
    videos.mkdir()
    for i in range(4):
        write_translation_clip(videos / f"c{i}.mp4", frames=FRAMES, dx=0.5 * (i + 1), side=SIDE)
    a = [llava("a0", "c0.mp4"), llava("a1", "gone.mp4"), llava("a2", "c1.mp4")]
    b = [llava(f"b{i}", f"c{i % 4}.mp4", "<video>Where does it go?", "Right.") for i in range(4)]
    (root / "a.json").write_text(json.dumps(a))
    (root / "b.jsonl").write_text("\n".join(json.dumps(r) for r in b))
    (root / "mix.yaml").write_text(
        "sources:\n"
        "  - {path: a.json, video_root: videos, ratio: 1}\n"
        "  - {path: b.jsonl, video_root: videos, ratio: 0.5}\n"
    )
    return {"root": root, "videos": videos, "yaml": root / "mix.yaml"}


def config(**overrides) -> InstructDataConfig:
    sampling = Sampling(keyframes_per_gop=2, fusion=FUSION, keyframe_jitter=overrides.pop("jitter", False))
    return InstructDataConfig(sampling=sampling, canonical=CANONICAL, **overrides)


def word_tokenizer(words: set[str]) -> PreTrainedTokenizerFast:
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<video>", "[UNK]"]
    vocab = {w: i for i, w in enumerate(specials + sorted(words))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<video>"],
        chat_template=template,
    )


def test_dataset_epoch_with_a_missing_video_never_crashes(mix, tmp_path):
    dataset = InstructionDataset(load_mix(mix["yaml"]), config(transcode_cache=str(tmp_path / "tc")))
    assert len(dataset) == 3 + 2  # all of a.json, half of b.jsonl
    missing = str(mix["videos"] / "gone.mp4")
    sample = dataset[1]  # a1's video is gone: the next record (a2) stands in, the skip is reported
    assert sample.id == "a2" and sample.skipped == ((missing, "no such file"),)
    assert sample.plan.rgb_frames == 5 and sample.visual.kinds == (
        "I",
        "P",
        "I",
        "P",
        "I",
        "P",
        "I",
        "P",
        "I",
        "P",
    )
    assert sample.visual.frames.shape == (5, SIDE, SIDE, 3) and sample.visual.mv.shape == (5, SIDE, SIDE, 2)

    words = {
        w for r in ["user assistant system What moves? A square. Where does it go? Right."] for w in r.split()
    }
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=2, collate_fn=InstructCollator(word_tokenizer(words))
    )
    batches = list(loader)
    assert sum(len(b) for b in batches) == len(dataset)
    assert [s for b in batches for s in b.skipped] == [(missing, "no such file")]
    assert not any(b.dropped for b in batches)
    assert dataset.failures.total() == 2  # once above, once in the epoch (this process's count)


def test_cached_dataset_equals_raw_and_skips_failed_preprocessing(mix, tmp_path):
    listing = tmp_path / "videos.txt"
    listing.write_text(
        "\n".join(str(mix["videos"] / f"c{i}.mp4") for i in (0, 2, 3)) + f"\n{mix['videos']}/gone.mp4\n"
    )
    cache = tmp_path / "cache"
    settings = CacheSettings(CANONICAL, fusion=FUSION)
    summary = run_preprocess(PreprocessConfig(listing, cache, settings, progress=False))
    assert (summary["done"], summary["failed"]) == (3, 1)

    sources = load_mix(mix["yaml"])
    raw = InstructionDataset(sources, config(jitter=True, transcode_cache=str(tmp_path / "tc")))
    cached = InstructionDataset(sources, config(jitter=True, cache_dir=str(cache)))
    for dataset in (raw, cached):
        dataset.set_epoch(3)
    for i in (0, 2, 3, 4):  # c1 (a2) is not in the cache: decoded from the file; the rest read the cache
        a, b = raw[i], cached[i]
        assert a.id == b.id and a.plan == b.plan
        assert torch.equal(a.visual.frames, b.visual.frames) and torch.equal(a.visual.mv, b.visual.mv)
        assert torch.equal(a.visual.residual, b.visual.residual)
    assert cached.cache_misses == 1 and raw.cache_misses == 0
    # gone.mp4 failed in preprocessing: the cached dataset skips it with the recorded reason.
    assert cached[1].skipped[0][1].endswith("preprocessing failed: no such file")

    wrong = config(cache_dir=str(cache))
    wrong.canonical = CanonicalSettings(width=32, height=32, gop=GOP)
    with pytest.raises(CopeInputError, match="cache made with"):
        InstructionDataset(sources, wrong)
