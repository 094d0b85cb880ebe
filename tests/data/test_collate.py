"""Collation: ChatML rendering, labels exactly on the assistant answers, padding, truncation."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from cope.data.collate import IGNORE_INDEX, CollateConfig, InstructCollator
from cope.data.instruct import InstructSample, normalise_record
from cope.model.inputs import VisualInput
from cope.plan import PlanEntry, TokenLayout, TokenPlan

# ChatML as Qwen / LLaVA-Video's qwen_1_5 renders it: a default system turn, <|im_start|>role\n …
CHATML = (
    "{% if messages[0]['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<video>"]
CORPUS = [
    "You are a helpful assistant. What moves in the video? Where does it go? Describe the clip.",
    "A red square moves to the right. It leaves the frame at the end. Nothing else happens.",
]


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    """A small byte-level BPE (decodes any text exactly) with ChatML specials, built offline."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(CORPUS * 4, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<video>"],
        chat_template=CHATML,
    )


def sample(turns: list[tuple[str, str]], ident: str = "s", plan: TokenPlan | None = None) -> InstructSample:
    record = normalise_record(
        {"id": ident, "video": "v.mp4", "conversations": [{"from": f, "value": v} for f, v in turns]}, "test"
    )
    plan = plan or TokenPlan((PlanEntry("I", 0, 0), PlanEntry("P", 30, 0, 0)))
    visual = VisualInput(
        kinds=("I", "P"),
        indices=(0, 30),
        frames=torch.zeros((1, 16, 16, 3), dtype=torch.uint8),
        mv=torch.zeros((1, 16, 16, 2)),
        residual=torch.zeros((1, 16, 16, 3), dtype=torch.int16),
    )
    return InstructSample(ident, "v.mp4", record["conversation"], visual, plan)


TWO_ROUNDS = [
    ("human", "<image>\nWhat moves in the video?"),
    ("gpt", "A red square moves to the right."),
    ("human", "Where does it go?"),
    ("gpt", "It leaves the frame at the end."),
]


def supervised_spans(tokenizer, ids: torch.Tensor, labels: torch.Tensor) -> list[str]:
    """Decode each maximal run of unmasked labels."""
    spans, current = [], []
    for token, label in zip(ids.tolist(), labels.tolist(), strict=True):
        if label != IGNORE_INDEX:
            assert label == token  # labels are the input ids themselves (shifted inside the model)
            current.append(token)
        elif current:
            spans.append(tokenizer.decode(current))
            current = []
    if current:
        spans.append(tokenizer.decode(current))
    return spans


def test_labels_are_exactly_the_assistant_answers(tokenizer):
    collator = InstructCollator(tokenizer)
    batch = collator([sample(TWO_ROUNDS)])
    ids, labels = batch.input_ids[0], batch.labels[0]
    assert supervised_spans(tokenizer, ids, labels) == [
        "A red square moves to the right.<|im_end|>",
        "It leaves the frame at the end.<|im_end|>",
    ]
    text = tokenizer.decode(ids)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<video>\nWhat moves in the video?<|im_end|>\n"
        "<|im_start|>assistant\nA red square moves to the right.<|im_end|>\n"
        "<|im_start|>user\nWhere does it go?<|im_end|>\n"
        "<|im_start|>assistant\nIt leaves the frame at the end.<|im_end|>\n"
    )
    video_id = tokenizer.convert_tokens_to_ids("<video>")
    assert ids.tolist().count(video_id) == 1  # the <image> placeholder became one <video> token


def test_padding_batch_and_unpadded_sequences(tokenizer):
    collator = InstructCollator(tokenizer, CollateConfig(pad_to_multiple_of=8))
    short = sample([("human", "<video>What moves?"), ("gpt", "A square.")], "short")
    batch = collator([sample(TWO_ROUNDS, "long"), short])
    single = [collator([s]) for s in (sample(TWO_ROUNDS, "long"), short)]
    lengths = [int(b.attention_mask.sum()) for b in single]
    assert batch.input_ids.shape == (2, -(-max(lengths) // 8) * 8)
    assert batch.attention_mask.sum(dim=1).tolist() == lengths
    ids, labels = batch.sequences()
    for row, one in enumerate(single):  # padding changes nothing but the tail
        (one_ids,), (one_labels,) = one.sequences()
        assert torch.equal(ids[row], one_ids) and torch.equal(labels[row], one_labels)
        assert (batch.input_ids[row, lengths[row] :] == tokenizer.pad_token_id).all()
        assert (batch.labels[row, lengths[row] :] == IGNORE_INDEX).all()
    assert batch.ids == ["long", "short"] and len(batch.visual) == 2 and len(batch.plans) == 2


def test_truncation_drops_rounds_then_cuts_the_answer_never_the_placeholder(tokenizer):
    collator = InstructCollator(tokenizer)
    full = collator.encode(sample(TWO_ROUNDS).conversation)
    first_round = full.round_ends[0]
    # Room for round 1 and part of round 2: round 2 goes entirely.
    collator.config.max_length = first_round + 3
    batch = collator([sample(TWO_ROUNDS)])
    assert batch.input_ids.shape[1] == first_round
    assert tokenizer.decode(batch.input_ids[0]).endswith("to the right.<|im_end|>\n")
    assert supervised_spans(tokenizer, batch.input_ids[0], batch.labels[0]) == [
        "A red square moves to the right.<|im_end|>"
    ]
    # Less than round 1: its answer is cut at the limit.
    collator.config.max_length = first_round - 4
    batch = collator([sample(TWO_ROUNDS)])
    assert batch.input_ids.shape[1] == first_round - 4
    assert "A red" in supervised_spans(tokenizer, batch.input_ids[0], batch.labels[0])[0]
    # No answer token fits: the sample is dropped, named, with the reason.
    collator.config.max_length = full.placeholder_at + 2
    batch = collator([sample(TWO_ROUNDS, "x")])
    assert len(batch) == 0 and batch.input_ids.shape == (0, 0)
    assert batch.dropped == [("x", f"no answer token fits in the {full.placeholder_at + 2}-token limit")]
    collator.config.max_length = full.placeholder_at
    assert "placeholder" in collator([sample(TWO_ROUNDS, "x")]).dropped[0][1]


def test_visual_positions_count_toward_max_length(tokenizer):
    layout = TokenLayout(image_side=2, delta_rows=1, delta_cols=2)  # I = 6 positions, P = 3
    plan = TokenPlan((PlanEntry("I", 0, 0), PlanEntry("P", 30, 0, 0)))
    collator = InstructCollator(tokenizer, CollateConfig(layout=layout))
    text_tokens = collator.encode(sample(TWO_ROUNDS).conversation).round_ends[0]
    # Text tokens + 9 visual positions − the placeholder's own position ≤ max_length.
    collator.config.max_length = text_tokens + plan.tokens(layout) - 1
    assert collator([sample(TWO_ROUNDS, plan=plan)]).input_ids.shape[1] == text_tokens
    collator.config.max_length -= 1
    assert collator([sample(TWO_ROUNDS, plan=plan)]).input_ids.shape[1] == text_tokens - 1


def test_system_prompt_and_record_system_turn(tokenizer):
    collator = InstructCollator(tokenizer, CollateConfig(system_prompt="Watch closely."))
    text = tokenizer.decode(collator([sample(TWO_ROUNDS[:2])]).input_ids[0])
    assert text.startswith("<|im_start|>system\nWatch closely.<|im_end|>\n<|im_start|>user\n<video>")
    own = [("system", "Be brief."), *TWO_ROUNDS[:2]]
    text = tokenizer.decode(collator([sample(own)]).input_ids[0])
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n") and "Watch closely" not in text


def test_sample_with_a_second_placeholder_is_dropped_not_fatal(tokenizer):
    collator = InstructCollator(tokenizer, CollateConfig(video_placeholder="<|endoftext|>"))
    turns = [("human", "<video>What is <|endoftext|>?"), ("gpt", "A token.")]
    batch = collator([sample(turns, "twice"), sample(TWO_ROUNDS, "fine")])
    assert (
        batch.ids == ["fine"]
        and batch.dropped[0][0] == "twice"
        and "2 video placeholders" in batch.dropped[0][1]
    )


def test_placeholder_must_be_one_token(tokenizer):
    with pytest.raises(ValueError, match="not one token"):
        InstructCollator(tokenizer, CollateConfig(video_placeholder="<clip>"))


def test_training_prompt_is_the_inference_prompt():
    """What the model is trained on up to the answer is exactly what `cope ask` feeds it."""
    from cope.model.videolm import tiny_random

    model = tiny_random(image_size=16, patch_size=8, canonical_side=16)
    question, answer = "which way does the red circle move ?", "left"
    collator = InstructCollator(
        model.tokenizer,
        CollateConfig(
            video_placeholder=model.config.video_placeholder,
            chat_template=model.config.chat_template,
            system_prompt=model.config.system_prompt,
            layout=model.config.layout,
        ),
    )
    batch = collator([sample([("human", "<image>\n" + question), ("gpt", answer)])])
    prompt = model.build_prompt(torch.zeros(3, model.hidden_size), question).input_ids.tolist()
    ids, labels = batch.input_ids[0].tolist(), batch.labels[0].tolist()
    assert ids[: len(prompt)] == prompt
    assert all(label == IGNORE_INDEX for label in labels[: len(prompt)])
    assert model.tokenizer.decode(ids[len(prompt) :]).split()[0] == answer
