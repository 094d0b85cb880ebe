"""The `cope` lmms-eval model, run through lmms-eval's own evaluator on the shipped local tasks."""

from __future__ import annotations

import json

import pytest

pytest.importorskip(
    "lmms_eval",
    reason="lmms-eval is not installed (`pip install --no-deps lmms-eval==0.7.3 && pip install -e .[eval]`)",
)


from cope.cli import main  # noqa: E402
from cope.eval.choice import continuation_logprob  # noqa: E402
from cope.eval.lmms_plugin import CopeLmms, cut_at_stop  # noqa: E402
from cope.eval.lmms_registry import local_task_configs, local_task_manager, write_lmms_jsonl  # noqa: E402
from cope.eval.local import format_question, is_correct, load_local_task, resolve_answer  # noqa: E402

pytestmark = pytest.mark.slow  # runs lmms-eval


def test_entry_point_resolves_the_registered_name():
    from lmms_eval.models import get_model

    assert get_model("cope") is CopeLmms


def test_simple_evaluate_by_registered_name(eval_checkpoint, eval_task, tmp_path, eval_env):
    from lmms_eval.evaluator import simple_evaluate

    from cope.model.videolm import CopeVideoLM, GenerationConfig

    samples = load_local_task(eval_task)
    data = write_lmms_jsonl(samples, tmp_path, prompt_style="options")
    results = simple_evaluate(
        model="cope",
        model_args=f"pretrained={eval_checkpoint},mode=cope,keyframes_per_gop=1,device=cpu,dtype=float32",
        tasks=local_task_configs(data, ("cope_local", "cope_local_mcppl")),
        task_manager=local_task_manager(),
        log_samples=True,
    )

    # The same model, asked directly, answers every question as lmms-eval recorded it, in order.
    model = CopeVideoLM.from_pretrained(eval_checkpoint)
    logged = sorted(results["samples"]["cope_local"], key=lambda s: s["doc_id"])
    assert [s["doc_id"] for s in logged] == [0, 1, 2]
    expected = []
    for sample in samples:
        question = format_question(sample.question, sample.options, "options")
        answer = model.ask(
            sample.video,
            question,
            mode="cope",
            keyframes_per_gop=1,
            generation=GenerationConfig(max_new_tokens=32),
        )
        expected.append(answer.text.strip())
    assert [s["filtered_resps"][0] for s in logged] == expected
    accuracy = sum(is_correct(p, s.answer, s.options) for p, s in zip(expected, samples, strict=True)) / 3
    assert results["results"]["cope_local"]["accuracy,none"] == pytest.approx(accuracy)

    # Likelihood scoring of the multiple-choice questions: acc = argmax over options of log p.
    mc = [s for s in samples if s.options]
    assert len(results["samples"]["cope_local_mcppl"]) == len(mc)
    hits = 0
    for sample in mc:
        encoded = model.encode_video(sample.video, "cope", keyframes_per_gop=1)
        prompt = model.build_prompt(encoded, sample.question)
        scores = [
            continuation_logprob(model, prompt.inputs_embeds, _ids(model, o))[0] for o in sample.options
        ]
        hits += max(range(len(scores)), key=scores.__getitem__) == resolve_answer(
            sample.answer, sample.options
        )
    assert results["results"]["cope_local_mcppl"]["acc,none"] == pytest.approx(hits / len(mc))


def _ids(model, text):
    from cope.model.videolm.prompting import tokenize

    return tokenize(model, text)


def test_continuation_logprob_is_additive_and_knows_greedy(eval_checkpoint, eval_task, eval_env):
    import torch

    from cope.model.videolm import CopeVideoLM, GenerationConfig

    model = CopeVideoLM.from_pretrained(eval_checkpoint)
    encoded = model.encode_video(load_local_task(eval_task)[0].video, "cope")
    prompt = model.build_prompt(encoded, "what moves ?")
    answer = model.generate(prompt, GenerationConfig(max_new_tokens=3, ignore_eos=True))
    greedy = torch.tensor(answer.token_ids)
    total, is_greedy = continuation_logprob(model, prompt.inputs_embeds, greedy)
    assert is_greedy and total < 0
    # log p(a b c) = log p(a) + log p(b c | a)
    first, _ = continuation_logprob(model, prompt.inputs_embeds, greedy[:1])
    extended = torch.cat([prompt.inputs_embeds, model.embed_text(greedy[:1]).unsqueeze(0)], dim=1)
    rest, _ = continuation_logprob(model, extended, greedy[1:])
    assert total == pytest.approx(first + rest, abs=1e-4)
    other = greedy.clone()
    other[0] = (other[0] + 1) % len(model.tokenizer)
    assert continuation_logprob(model, prompt.inputs_embeds, other)[1] is False


def test_generation_kwargs_and_stop_strings(eval_checkpoint):
    from cope.model.videolm import CopeVideoLM

    plugin = CopeLmms(
        model=CopeVideoLM.from_pretrained(eval_checkpoint), mode="iframes-only", max_new_tokens=7
    )
    assert plugin.sampling == {"mode": "iframes-only"}
    greedy = plugin.generation_config({"temperature": 0.7, "do_sample": False})
    assert (greedy.temperature, greedy.max_new_tokens) == (0.0, 7)
    sampled = plugin.generation_config(
        {"temperature": 0.7, "do_sample": True, "top_p": 0.9, "max_new_tokens": 3}
    )
    assert (sampled.temperature, sampled.top_p, sampled.max_new_tokens) == (0.7, 0.9, 3)
    assert cut_at_stop("left\n\nQuestion: x", ["\n\n", "Question"]) == "left"
    assert cut_at_stop("left", None) == "left"
    with pytest.raises(ValueError, match="one video at a time"):
        CopeLmms(model=plugin.model, batch_size=4)


def test_cope_eval_lmms_tasks_prints_one_json_object(eval_checkpoint, eval_task, tmp_path, eval_env, capsys):
    out = tmp_path / "samples.jsonl"
    args = [
        "eval",
        str(eval_task),
        "--lmms-tasks",
        "cope_local",
        "--model",
        str(eval_checkpoint),
        "--mode",
        "iframes-only",
        "--device",
        "cpu",
        "--out",
        str(out),
        "--json",
    ]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)  # stdout holds exactly one JSON object
    assert report["mode"] == "iframes-only"
    accuracy = report["tasks"]["cope_local"]["accuracy,none"]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["doc_id"] for row in sorted(rows, key=lambda r: r["doc_id"])] == [0, 1, 2]
    assert accuracy == pytest.approx(sum(row["accuracy"] for row in rows) / 3)

    # The direct local evaluation of the same model, mode and prompt agrees.
    direct = tmp_path / "direct.jsonl"
    assert (
        main(
            [
                "eval",
                str(eval_task),
                "--model",
                str(eval_checkpoint),
                "--mode",
                "iframes-only",
                "--device",
                "cpu",
                "--out",
                str(direct),
                "--json",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["accuracy"] == pytest.approx(accuracy)

    assert main(["eval", "--lmms-tasks", "cope_local", "--model", str(eval_checkpoint)]) == 2
    assert "give the TASK.jsonl" in capsys.readouterr().err
    assert (
        main(["eval", str(eval_task), "--lmms-tasks", "no_such_task", "--model", str(eval_checkpoint)]) == 2
    )
