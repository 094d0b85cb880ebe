"""How lmms-eval finds the ``cope`` model and the local tasks (imports no lmms-eval model code).

``pyproject.toml`` registers ``manifest`` in the ``lmms_eval.models`` entry-point group; lmms-eval
(0.7) calls it while building its model registry, so ``lmms-eval --model cope`` resolves to
``cope.eval.lmms_plugin.CopeLmms`` once cope is installed.
"""

from __future__ import annotations

import json
from pathlib import Path

from cope.eval.local import LETTERS, format_question

TASKS_DIR = Path(__file__).parent / "tasks"  # cope_local, cope_local_mcppl (pass as --include_path)
LOCAL_TASKS = ("cope_local", "cope_local_mcppl")


def manifest():
    """The ``lmms_eval.models`` entry-point payload."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id="cope", simple_class_path="cope.eval.lmms_plugin.CopeLmms")


def write_lmms_jsonl(samples, directory: str | Path, prompt_style: str = "bare") -> Path:
    """A local task (``load_local_task``) as the ``cope_local`` tasks read it: uniform column types.

    Videos become absolute paths, ``options`` is always a list (empty for open questions),
    ``answer`` a string (the letter, for multiple choice), ``prompt`` the question as
    ``format_question`` renders it in ``prompt_style``, and the sample's other fields one JSON
    string, so the JSON loader of ``datasets`` infers one schema for every line.
    """
    path = Path(directory) / "cope_local.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for sample in samples:
            row = {
                "video": str(sample.video),
                "question": sample.question,
                "prompt": format_question(sample.question, sample.options, prompt_style),
                "options": sample.options or [],
                "answer": LETTERS[sample.answer_option] if sample.options else str(sample.answer),
                "fields": json.dumps(sample.fields),
            }
            f.write(json.dumps(row) + "\n")
    return path


def local_task_configs(jsonl_path: str | Path, tasks=("cope_local",)) -> list[dict]:
    """lmms-eval task configs running the shipped local task YAMLs on ``jsonl_path``."""
    return [{"task": task, "dataset_kwargs": {"data_files": {"test": str(jsonl_path)}}} for task in tasks]


def local_task_manager(include_defaults: bool = False):
    """A ``TaskManager`` that knows the local tasks (and lmms-eval's own when asked)."""
    from lmms_eval.tasks import TaskManager

    return TaskManager(include_path=str(TASKS_DIR), include_defaults=include_defaults)
