"""Plan options validated once for every command, and the disk budget of ``extract`` (issue 14)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import cope.npz
from cope.cli import main
from cope.plan import check_plan_options

SIZE = ["--size", "64x64"]


@pytest.mark.parametrize(
    ("gop", "fusion", "k", "message"),
    [
        (240, 0, 1, "fusion must be ≥ 1, got 0"),
        (240, -3, 1, "fusion must be ≥ 1, got -3"),
        (240, 7, 1, "fusion 7 must divide the GOP size 240"),
        (240, 241, 1, "fusion 241 is longer than the GOP of 240 frames"),
        (240, 30, 3, "keyframes per GOP must divide the 8 slots"),
        (240, 30, 0, "keyframes per GOP must be ≥ 1, got 0"),
        (0, 30, 1, "GOP size must be ≥ 1, got 0"),
        (240, 2.5, 1, "fusion must be a whole number, got 2.5"),
        (240, True, 1, "fusion must be a whole number, got True"),
    ],
)
def test_check_plan_options_refuses_with_one_flagless_line(gop, fusion, k, message):
    with pytest.raises(ValueError, match="^" + message) as caught:
        check_plan_options(gop, fusion, k)
    text = str(caught.value)
    assert "\n" not in text and "--" not in text


@pytest.mark.parametrize(("gop", "fusion", "k"), [(240, 30, 1), (240, 30, 8), (240, 240, 1), (20, 5, 2)])
def test_check_plan_options_accepts_valid_plans(gop, fusion, k):
    check_plan_options(gop, fusion, k)


@pytest.mark.parametrize("fusion", ["0", "7", "241"])
@pytest.mark.parametrize("command", ["inspect", "extract"])
def test_invalid_fusion_exits_2_in_every_command_before_decoding(
    command, fusion, integer_clip, tmp_path, capsys
):
    """Before: --fusion 0 → exit 1 (ZeroDivisionError); inspect --fusion 7 → exit 1 (ValueError);
    extract --fusion 7 and --fusion 241 → exit 0."""
    out = ["--out", str(tmp_path / "x.npz")] if command == "extract" else []
    cache = tmp_path / "cache"
    code = main([command, str(integer_clip), "--fusion", fusion, *out, *SIZE, "--cache-dir", str(cache)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("cope: error: ") and err.count("\n") == 1
    assert not (tmp_path / "x.npz").exists()
    assert not cache.exists() or not any(cache.rglob("*.mp4"))  # refused before transcoding


def test_a_plan_without_delta_frames_says_so(integer_clip, cache_dir, tmp_path, capsys):
    """Before: --fusion 240 (1 slot per GOP) planned zero Δ-frames without a word."""
    out = tmp_path / "x.npz"
    args = [str(integer_clip), "--fusion", "240", *SIZE, "--cache-dir", str(cache_dir)]
    assert main(["extract", *args, "--out", str(out), "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["delta_frames"] == 0
    assert "the plan has no Δ-frames" in captured.err
    assert main(["inspect", *args]) == 0
    assert "the plan has no Δ-frames" in capsys.readouterr().err


def test_inspect_leaves_out_keyframe_counts_that_do_not_fit(integer_clip, cache_dir, capsys):
    """fusion 80: 3 slots per GOP, so there is no K = 2 or 4 plan (before: exit 1, ValueError)."""
    assert (
        main(["inspect", str(integer_clip), "--fusion", "80", *SIZE, "--cache-dir", str(cache_dir), "--json"])
        == 0
    )
    assert set(json.loads(capsys.readouterr().out)["plans"]) == {"dense64", "cope_k1"}


# ---- disk budget ------------------------------------------------------------------------------


def extract(clip, out, cache_dir, *extra):
    return main(["extract", str(clip), "--out", str(out), *SIZE, "--cache-dir", str(cache_dir), *extra])


def test_extract_refuses_an_archive_larger_than_the_free_space(
    integer_clip, cache_dir, tmp_path, monkeypatch, capsys
):
    """Before: no check; a 0.5 MB clip could write 953 MB. The free space is faked, not filled."""
    monkeypatch.setattr(cope.npz, "free_bytes", lambda directory: 100_000)
    out = tmp_path / "x.npz"
    assert extract(integer_clip, out, cache_dir, "--fusion", "1") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("cope: error: ")
    # 1 I-frame + 60 P-frames at 64×64: 12 KB + 60 × (32 KB motion + 24 KB residual) ≈ 3.4 MB.
    assert "needs about" in err and "0.1 MB free" in err
    assert "--dtype float16" in err and "--compress" in err
    assert not out.exists() and not list(tmp_path.glob(".cope-npz-*"))


def test_compact_output_fits_where_the_default_does_not(
    integer_clip, cache_dir, tmp_path, monkeypatch, capsys
):
    plain, compact = tmp_path / "plain.npz", tmp_path / "compact.npz"
    assert extract(integer_clip, plain, cache_dir, "--fusion", "1") == 0
    assert extract(integer_clip, compact, cache_dir, "--fusion", "1", "--dtype", "float16", "--compress") == 0
    a, b = np.load(plain), np.load(compact)
    assert b["mv"].dtype == np.float16 and np.array_equal(a["mv"], b["mv"].astype(np.float32))
    assert np.array_equal(a["residual"], b["residual"])
    assert compact.stat().st_size < plain.stat().st_size / 2
    # The estimate is the real size of the uncompressed archive, within its headers.
    capsys.readouterr()
    monkeypatch.setattr(cope.npz, "free_bytes", lambda directory: plain.stat().st_size - 10_000)
    assert extract(integer_clip, tmp_path / "again.npz", cache_dir, "--fusion", "1") == 2
    assert "needs about" in capsys.readouterr().err


def test_extract_warns_above_the_large_output_threshold(
    integer_clip, cache_dir, tmp_path, monkeypatch, capsys
):
    import cope.cli

    monkeypatch.setattr(cope.cli, "LARGE_OUTPUT_BYTES", 1_000_000)
    assert extract(integer_clip, tmp_path / "x.npz", cache_dir, "--fusion", "1") == 0
    err = capsys.readouterr().err
    assert "cope: warning:" in err and "writing about 3." in err


def test_npz_estimate_matches_the_written_archive(tmp_path):
    arrays = {"a": ((4, 5), "float32"), "b": ((), "int64"), "c": ((3,), "uint8")}
    counts = {"a": 7, "b": 7, "c": 2}
    with cope.npz.NpzStreamWriter(tmp_path / "x.npz", arrays) as writer:
        for name, n in counts.items():
            for _ in range(n):
                writer.append(name, np.zeros(arrays[name][0]))
    estimate = cope.npz.npz_bytes(arrays, counts)
    actual = (tmp_path / "x.npz").stat().st_size
    assert actual <= estimate <= actual + 1024


@pytest.mark.parametrize("command", ["eval", "preprocess"])
def test_other_commands_apply_the_same_rules(command, tmp_path, capsys):
    listing = tmp_path / "list.txt"
    listing.write_text("{}\n")
    out = ["--out", str(tmp_path / "cache")] if command == "preprocess" else []
    assert main([command, str(listing), "--fusion", "7", *out]) == 2
    assert capsys.readouterr().err.strip().endswith("cope: error: fusion 7 must divide the GOP size 240")
