"""Cost of the Δ-encoder per P-frame against one SigLIP forward per frame, as JSON on stdout.

    python benchmarks/delta_encoder_cost.py            # FLOPs and time at batch 1 and 64 (slow on CPU)
    python benchmarks/delta_encoder_cost.py --quick    # FLOPs at batch 1 and 64, time at batch 1 only

Both sides get a 384×384 frame, as in the paper's LLaVA-Video setup. The Δ-encoder configs are
``paper`` (the stated dims) and ``compact``; the vision tower is a randomly initialised
``SiglipVisionModel`` with SigLIP-so400m-patch14-384's architecture (hidden 1152, 27 layers,
16 heads, FFN 4304, patch 14: 729 tokens), built from a hand-written config (no hub access).

* FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` around one forward, on the meta device, where
  scaled-dot-product attention decomposes into matmuls and is counted (the CPU attention kernel is
  invisible to the counter). Convolutions and matmuls only: norms and activations are not counted.
* Time: median wall time over ``--repeats`` forwards after ``--warmup`` forwards, in inference
  mode, float32, all models in this process and timed round-robin (SigLIP, paper, compact, SigLIP,
  …) so that load from other processes hits each alike; per frame = batch time / batch size.
* Ratios: Δ-encoder / SigLIP per frame, for FLOPs, and for time at each batch size (the median over
  rounds of the ratio within a round). The issue's target is ≤ 0.05.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import SiglipVisionConfig, SiglipVisionModel

from cope.model.delta import DeltaEncoder, delta_encoder_config

SIDE = 384
TARGET_RATIO = 0.05


def siglip_so400m_config() -> SiglipVisionConfig:
    """google/siglip-so400m-patch14-384's vision tower, written out (no hub)."""
    return SiglipVisionConfig(
        hidden_size=1152,
        num_hidden_layers=27,
        num_attention_heads=16,
        intermediate_size=4304,
        image_size=SIDE,
        patch_size=14,
        hidden_act="gelu_pytorch_tanh",
        layer_norm_eps=1e-6,
    )


def delta_inputs(batch: int, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    if device == "meta":
        return torch.empty(batch, SIDE, SIDE, 2, device="meta"), torch.empty(
            batch, SIDE, SIDE, 3, device="meta"
        )
    g = torch.Generator().manual_seed(0)
    mv = torch.randn(batch, SIDE, SIDE, 2, generator=g) * 8
    residual = torch.randint(-255, 256, (batch, SIDE, SIDE, 3), generator=g).float()
    return mv, residual


def siglip_inputs(batch: int, device: str = "cpu") -> tuple[torch.Tensor]:
    if device == "meta":
        return (torch.empty(batch, 3, SIDE, SIDE, device="meta"),)
    return (torch.rand(batch, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(0)) * 2 - 1,)


def flops_per_frame(build, make_inputs, batch: int) -> float:
    with torch.device("meta"):
        model = build().eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(*make_inputs(batch, "meta"))
    return counter.get_total_flops() / batch


def time_round_robin(
    models: dict, inputs: dict, batch: int, warmup: int, repeats: int
) -> dict[str, list[float]]:
    """Seconds per frame of each model in each round; models take turns so load drift hits all alike."""
    times = {key: [] for key in models}
    with torch.inference_mode():
        for key, model in models.items():
            for _ in range(warmup):
                model(*inputs[key])
        for _ in range(repeats):
            for key, model in models.items():
                print(f"[{key}] timing batch {batch}", file=sys.stderr)
                start = time.perf_counter()
                model(*inputs[key])
                times[key].append((time.perf_counter() - start) / batch)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="time batch 1 only (FLOPs still at every batch size)"
    )
    parser.add_argument("--batch-sizes", default="1,64", help="comma-separated batch sizes (default: 1,64)")
    parser.add_argument(
        "--configs", default="paper,compact", help="Δ-encoder configs (default: paper,compact)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed forwards per measurement (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed forwards before timing")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    timed_batches = [b for b in batch_sizes if b == 1] if args.quick else batch_sizes
    names = args.configs.split(",")

    torch.manual_seed(0)
    builders = {"siglip_so400m": lambda: SiglipVisionModel(siglip_so400m_config())}
    for name in names:
        builders[name] = lambda name=name: DeltaEncoder(delta_encoder_config(name))
    make_inputs = {"siglip_so400m": siglip_inputs, **{name: delta_inputs for name in names}}

    results = {}
    for key, build in builders.items():
        print(f"[{key}] counting FLOPs", file=sys.stderr)
        with torch.device("meta"):
            params = sum(p.numel() for p in build().parameters())
        flops = {str(b): flops_per_frame(build, make_inputs[key], b) for b in batch_sizes}
        results[key] = {"params": params, "flops_per_frame": flops, "seconds_per_frame": {}}

    models = {key: build().eval() for key, build in builders.items()}
    for batch in timed_batches:
        inputs = {key: make_inputs[key](batch) for key in models}
        rounds = time_round_robin(models, inputs, batch, args.warmup, args.repeats)
        for key, seconds in rounds.items():
            results[key]["seconds_per_frame"][str(batch)] = statistics.median(seconds)
        for name in names:  # the ratio within each round (same load), then the median over rounds
            ratios = [t / base for t, base in zip(rounds[name], rounds["siglip_so400m"], strict=True)]
            results[name].setdefault("time_ratio", {})[str(batch)] = statistics.median(ratios)

    siglip = results["siglip_so400m"]
    for name in names:
        entry = results[name]
        entry["flops_ratio"] = {
            b: entry["flops_per_frame"][b] / siglip["flops_per_frame"][b] for b in entry["flops_per_frame"]
        }
        entry["meets_target"] = all(
            r <= TARGET_RATIO for r in [*entry["flops_ratio"].values(), *entry.get("time_ratio", {}).values()]
        )

    report = {
        "input": f"{SIDE}x{SIDE}",
        "torch_threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "warmup": args.warmup,
        "quick": args.quick,
        "target_ratio": TARGET_RATIO,
        "siglip_so400m": siglip,
        "delta_encoder": {name: results[name] for name in names},
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
