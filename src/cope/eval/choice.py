"""Forced-choice scoring: which option the model finds most likely, not what it happens to generate.

The standard multiple-choice protocol (lmms-eval's ``multiple_choice`` output type, MMLU-style
evaluation): each option is scored as the assistant's answer to the question, by the **sum of its
tokens' log-probabilities** given the prompt, and the option with the highest sum is the model's
choice. Every question then gets exactly one of its options, so accuracy is comparable with the
chance level ``1 / len(options)``; free-form generation can name no option at all (scored wrong),
which hides what the model knows.

The option text is scored as written (stripped), without an end token, as lmms-eval does.
"""

from __future__ import annotations

import torch


def _hidden_after(model, prompt_embeds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The LLM's last hidden states over the prompt (1, L, D) followed by ``target`` (n,): (L + n, D)."""
    embeds = torch.cat([prompt_embeds, model.embed_text(target).unsqueeze(0)], dim=1)  # (1, L + n, D)
    return model.language_model(inputs_embeds=embeds).last_hidden_state[0]


def continuation_logprob(model, prompt_embeds: torch.Tensor, target: torch.Tensor) -> tuple[float, bool]:
    """log p(target | prompt) under the LLM, and whether greedy decoding would produce ``target``.

    ``prompt_embeds`` (1, L, D) is the chat prompt with the video spliced in; ``target`` (n,) the
    continuation's ids. One forward over L + n positions; position t's logits predict t + 1.
    """
    with torch.inference_mode():
        hidden = _hidden_after(model, prompt_embeds, target)  # (L + n, D)
        n = target.numel()
        logprobs = model.lm_head(hidden[-n - 1 : -1]).float().log_softmax(-1)  # (n, V)
        total = logprobs.gather(1, target.unsqueeze(1)).sum()
        greedy = bool((logprobs.argmax(-1) == target).all())
    return float(total), greedy


def end_of_turn_probability(model, prompt_embeds: torch.Tensor, answer: torch.Tensor) -> float:
    """p(the turn ends right after ``answer`` | prompt): the next token's probability mass on the
    model's stop tokens (EOS, end of turn), i.e. how surely an answer that reaches ``answer`` stops
    there instead of running on.

    ``prompt_embeds`` (1, L, D) as in ``continuation_logprob``; ``answer`` (n,) the answer's ids.
    """
    with torch.inference_mode():
        hidden = _hidden_after(model, prompt_embeds, answer)[-1]  # (D,)
        probs = model.lm_head(hidden).float().softmax(-1)  # (V,)
    stops = torch.tensor(sorted(model.stop_token_ids), device=probs.device)
    return float(probs[stops].sum())


def option_logprobs(model, prompt_embeds: torch.Tensor, options: list[str]) -> list[float]:
    """log p(option | prompt) for every option, in one batched forward.

    ``prompt_embeds`` (1, L, D). The k options are right-padded to the longest, n tokens: the
    padding comes after each option's own tokens, so under causal attention it never reaches the
    positions that are scored. Equal to ``continuation_logprob`` per option up to float rounding.
    """
    from cope.model.videolm.prompting import tokenize

    targets = [tokenize(model, option.strip()) for option in options]
    if any(t.numel() == 0 for t in targets):
        raise ValueError(f"every option needs at least one token, got {options!r}")
    k, n, length = len(targets), max(t.numel() for t in targets), prompt_embeds.shape[1]
    ids = torch.zeros(k, n, dtype=torch.long)
    scored = torch.zeros(k, n, dtype=torch.bool)
    for row, target in enumerate(targets):
        ids[row, : target.numel()] = target
        scored[row, : target.numel()] = True
    ids, scored = ids.to(model.device), scored.to(model.device)
    with torch.inference_mode():
        option_embeds = model.embed_text(ids.flatten()).view(k, n, -1)  # (k, n, D)
        embeds = torch.cat([prompt_embeds.expand(k, -1, -1), option_embeds], dim=1)  # (k, L + n, D)
        hidden = model.language_model(inputs_embeds=embeds).last_hidden_state  # (k, L + n, D)
        logprobs = model.lm_head(hidden[:, length - 1 : length - 1 + n]).float().log_softmax(-1)  # (k, n, V)
        per_token = logprobs.gather(2, ids.unsqueeze(2)).squeeze(2)  # (k, n)
        totals = per_token.masked_fill(~scored, 0.0).sum(dim=1)  # (k,)
    return totals.tolist()


def pick_option(model, prompt_embeds: torch.Tensor, options: list[str]) -> tuple[int, list[float]]:
    """(index of the most likely option, every option's log-probability); ties go to the first."""
    scores = option_logprobs(model, prompt_embeds, options)
    return max(range(len(scores)), key=scores.__getitem__), scores
