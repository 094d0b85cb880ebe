"""``cope motionqa``: generate and stats as JSON, bad arguments, refusing to overwrite a split."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cope.cli import main


def test_cli_generate_json_and_stats(tmp_path, capsys):
    assert (
        main(["motionqa", "generate", "--out", str(tmp_path), "--split", "val", "--clips", "3", "--json"])
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["clips"] == 3 and summary["split"] == "val" and summary["size"] == [128, 128]
    assert main(["motionqa", "stats", str(tmp_path), "--split", "val", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["questions"] == summary["questions"]


@pytest.mark.parametrize(
    "args",
    [
        ["--clips", "0"],
        ["--clips", "2", "--size", "100x"],
        ["--clips", "2", "--size", "63x64"],
        ["--clips", "2", "--seconds", "5"],
        ["--clips", "2", "--workers", "0"],
        ["--clips", "2", "--seed", "-1"],
        ["--clips", "2", "--pan-speed", "0.2"],
        ["--clips", "2", "--pan-speed", "0.2,0.1"],
        ["--clips", "2", "--pan-speed", "0.1,0.9"],
        ["--clips", "2", "--plans", "pan,spin"],
        ["--clips", "2", "--plans", "pan"],  # the first two clips of the test schedule are no pans
    ],
)
def test_cli_bad_arguments_exit_2(args, tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        code = main(["motionqa", "generate", "--out", str(tmp_path / "out"), "--split", "test", *args])
        raise SystemExit(code)
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error" in err[0]
    assert not (tmp_path / "out" / "test.json").exists()


def test_cli_refuses_to_overwrite_and_names_the_file(test_split):
    before = (test_split / "test.json").read_bytes()
    result = subprocess.run(
        [sys.executable, "-m", "cope.cli", "motionqa", "generate", "--out", str(test_split)]
        + ["--split", "test", "--clips", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == f"cope: error: {test_split / 'test.json'}: already exists " + (
        "(pass --overwrite to replace the test split)"
    )
    assert (test_split / "test.json").read_bytes() == before
    bad_split = subprocess.run(
        [sys.executable, "-m", "cope.cli", "motionqa", "stats", str(test_split), "--split", "dev"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad_split.returncode == 2 and len(bad_split.stderr.strip().splitlines()) == 1
