"""``cope finetune CONFIG [--resume] [--set K=V] [--json]``: stage 2 (and stage 0) training."""

from __future__ import annotations


def register(commands) -> None:
    parser = commands.add_parser(
        "finetune",
        help="stage 2: fine-tune the VideoLM on instruction data (resumable, DDP/FSDP/DeepSpeed via accelerate)",
        description=(
            "Fine-tune a CoPE VideoLM on a data mix of LLaVA-Video-style conversations, with I-frame "
            "tokens and Δ-tokens interleaved (data.mode: cope) or dense RGB frames at 1 FPS "
            "(data.mode: dense, stage 0). model.train_parts names what trains: delta_encoder, "
            "projector, llm (optionally LoRA), vision_tower. The result, train.output_dir/final, is a "
            "CoPE checkpoint for `cope ask --model`."
        ),
    )
    from cope.train.launch import add_run_options

    add_run_options(parser)
    parser.set_defaults(func=cmd_finetune)


def cmd_finetune(args) -> int:
    from cope.train.finetune import FinetuneConfig, run_finetune
    from cope.train.launch import is_main_process, load_stage_config, report

    config = load_stage_config(args, FinetuneConfig)
    result = run_finetune(config, resume=args.resume)
    return report(result, args, is_main_process())
