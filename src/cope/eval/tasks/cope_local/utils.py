"""lmms-eval glue for the ``cope_local`` tasks: documents → prompt, video, target, score.

A document is one line of a normalised local task (``cope.eval.lmms_plugin.write_lmms_jsonl``):
``video`` (absolute path), ``question``, ``prompt`` (the question as ``cope eval --prompt``
renders it; optional), ``options`` (list, empty for open questions), ``answer`` (string) and
``fields`` (the sample's other keys, JSON-encoded).
"""

import ast

from cope.eval.local import format_question, is_correct, resolve_answer


def _options(doc):
    return list(doc.get("options") or []) or None


def doc_to_visual(doc):
    return [doc["video"]]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc.get("prompt") or format_question(doc["question"], _options(doc))


def doc_to_target(doc):
    return doc["answer"]


def process_results(doc, results):
    return {"accuracy": float(is_correct(results[0], doc["answer"], _options(doc)))}


def multiple_choice_docs(dataset):
    return dataset.filter(lambda doc: bool(doc.get("options")))


def doc_to_question(doc, lmms_eval_specific_kwargs=None):
    return doc["question"].strip()


def doc_to_choice(doc):
    return list(doc["options"])


def doc_to_answer_index(doc):
    return resolve_answer(doc["answer"], list(doc["options"]))


def process_results_mcppl(doc, results):
    """acc = 1 when the answer's option has the lowest −log p (the cope model's loglikelihood output).

    lmms-eval 0.7.3 stores every model output through ``unwrap_generation_output``, which turns the
    ``(−log p, is_greedy)`` tuples of loglikelihood requests into their ``str``; read both forms.
    """
    nll = [float((ast.literal_eval(r) if isinstance(r, str) else r)[0]) for r in results]
    predicted = min(range(len(nll)), key=nll.__getitem__)
    return {"acc": float(predicted == doc_to_answer_index(doc))}
