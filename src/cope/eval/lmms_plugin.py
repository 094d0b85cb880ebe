"""The ``cope`` model for lmms-eval: any CoPE checkpoint (or LLaVA-OneVision base) under any sampling.

    lmms-eval --model cope --model_args pretrained=PATH,mode=cope,keyframes_per_gop=1 --tasks nextqa_mc_test

Registered through the ``lmms_eval.models`` entry point (``cope.eval.lmms_registry``). Model args:

* ``pretrained`` — checkpoint dir or hub id (default: the bundled model);
* ``mode`` — ``cope`` | ``iframes-only`` | ``dense`` | ``delta-zero`` (default: the checkpoint's);
* ``keyframes_per_gop``, ``fusion``, ``max_gops``, ``dense_frames`` — the sampling knobs
  (default: the checkpoint's config);
* ``device`` (``auto``: cuda → mps → cpu), ``dtype`` (``auto`` | ``float32`` | ``bfloat16`` | ``float16``);
* ``max_new_tokens`` — used when a task's ``generation_kwargs`` set none (default 256);
* ``cache_dir`` — the transcode cache (default ``~/.cache/cope``).

Requests are answered one at a time (batch size 1, like lmms-eval's ``llava_vid``). A task's
context (its ``doc_to_text``) becomes the question of the model's own chat prompt, after the
video. ``loglikelihood`` scores a continuation as the assistant's answer to that prompt and,
like lmms-eval's own models, returns ``(−log p, is_greedy)``: lmms-eval's multiple-choice scoring
picks the option with the smallest value (EvolvingLMMs-Lab/lmms-eval#370).
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from loguru import logger
from tqdm import tqdm

from cope.errors import CopeInputError
from cope.eval.choice import continuation_logprob

SAMPLING_ARGS = ("mode", "keyframes_per_gop", "fusion", "max_gops", "dense_frames")
ENCODED_CACHE_SIZE = 2  # multiple-choice requests of one document share its encoded video


class CopeLmms(lmms):
    """lmms-eval "simple" model wrapping a ``CopeVideoLM``."""

    is_simple = True

    def __init__(
        self,
        pretrained: str | None = None,
        mode: str | None = None,
        keyframes_per_gop: int | None = None,
        fusion: int | None = None,
        max_gops: int | None = None,
        dense_frames: int | None = None,
        device: str | None = None,
        dtype: str | None = None,
        max_new_tokens: int = 256,
        cache_dir: str | None = None,
        batch_size: int | str = 1,
        max_batch_size: int | None = None,
        model=None,  # an already loaded CopeVideoLM (``cope eval`` and tests); overrides ``pretrained``
    ) -> None:
        super().__init__()
        if str(batch_size) not in ("1", "auto"):
            raise ValueError(f"the cope model answers one video at a time; got batch_size={batch_size}")
        if model is None:
            from cope.model.videolm import CopeVideoLM, resolve_model

            model = CopeVideoLM.from_pretrained(
                resolve_model(pretrained), device=device or "auto", dtype=dtype
            )
        self.model = model
        self.sampling = {
            key: value
            for key, value in zip(
                SAMPLING_ARGS, (mode, keyframes_per_gop, fusion, max_gops, dense_frames), strict=True
            )
            if value is not None
        }
        self.max_new_tokens = int(max_new_tokens)
        self.cache_dir = cache_dir
        self._encoded: OrderedDict[str, object] = OrderedDict()

    @property
    def device(self) -> torch.device:
        return self.model.device

    # ------------------------------------------------------------------ requests

    def generate_until(self, requests: list[Instance]) -> list[str]:
        answers = []
        for request in tqdm(requests, desc="cope generate", disable=self.rank != 0):
            context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
            video = self._video(doc_to_visual, task, split, doc_id)
            try:
                encoded = self.encode(video)
            except CopeInputError as exc:  # one unreadable video must not end a long evaluation
                logger.warning(f"cope: {exc}; answering with an empty string")
                answers.append("")
                continue
            generation = self.generation_config(gen_kwargs or {})
            answer = self.model.generate(self.model.build_prompt(encoded, context), generation)
            answers.append(cut_at_stop(answer.text, (gen_kwargs or {}).get("until")))
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), answers[-1])
        return answers

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        from cope.model.videolm.prompting import tokenize

        results = []
        for request in tqdm(requests, desc="cope loglikelihood", disable=self.rank != 0):
            context, continuation, doc_to_visual, doc_id, task, split = request.args
            if callable(continuation):
                continuation = continuation(self.task_dict[task][split][doc_id])
            encoded = self.encode(self._video(doc_to_visual, task, split, doc_id))
            prompt = self.model.build_prompt(encoded, context)
            # The answer starts right after the template's assistant header: drop lmms-eval's " " delimiter.
            target = tokenize(self.model, str(continuation).strip()).to(self.model.device)  # (n,)
            if target.numel() == 0:
                raise ValueError(f"{task} document {doc_id}: empty continuation {continuation!r}")
            logprob, greedy = continuation_logprob(self.model, prompt.inputs_embeds, target)
            results.append((-logprob, greedy))  # lmms-eval's multiple choice takes the argmin
        return results

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("the cope model does not implement multi-round lmms-eval tasks")

    # ------------------------------------------------------------------ helpers

    def encode(self, video: str):
        """The video's ``EncodedVideo`` under this model's sampling (the last few are kept)."""
        if video in self._encoded:
            self._encoded.move_to_end(video)
            return self._encoded[video]
        encoded = self.model.encode_video(video, cache_dir=self.cache_dir, **self.sampling)
        self._encoded[video] = encoded
        while len(self._encoded) > ENCODED_CACHE_SIZE:
            self._encoded.popitem(last=False)
        return encoded

    def generation_config(self, gen_kwargs: dict):
        """lmms-eval generation kwargs → ``GenerationConfig`` (greedy unless do_sample and T > 0)."""
        from cope.model.videolm import GenerationConfig

        if int(gen_kwargs.get("num_beams") or 1) > 1:
            logger.warning("cope: beam search is not supported; decoding greedily")
        sample = bool(gen_kwargs.get("do_sample", False)) and float(gen_kwargs.get("temperature") or 0) > 0
        return GenerationConfig(
            max_new_tokens=int(gen_kwargs.get("max_new_tokens") or self.max_new_tokens),
            temperature=float(gen_kwargs["temperature"]) if sample else 0.0,
            top_p=float(gen_kwargs.get("top_p") or 1.0) if sample else 1.0,
        )

    def _video(self, doc_to_visual, task: str, split: str, doc_id: int) -> str:
        visuals = doc_to_visual(self.task_dict[task][split][doc_id])
        paths = [v for v in visuals if isinstance(v, (str, Path))] if isinstance(visuals, list) else []
        if len(paths) != 1 or len(visuals) != 1:
            raise ValueError(
                f"{task} document {doc_id}: the cope model reads one video file per question, "
                f"the task gives {type(visuals).__name__} of {len(visuals) if isinstance(visuals, list) else '?'}"
            )
        return str(paths[0])


def cut_at_stop(text: str, until) -> str:
    """The text up to the first of the task's stop strings (``until``: str, list or None)."""
    stops = [until] if isinstance(until, str) else list(until or [])
    for stop in stops:
        if stop and stop in text:
            text = text[: text.index(stop)]
    return text
