"""Training benchmark: LoRA vs full fine-tuning of SmolLM2-135M, same batch and sequence length, ratios from one run.

    .venv/bin/python bench/training.py [--steps 6] [--shapes 1x128,1x512,4x512] [--rank 16]

Each mode runs in its own process (so peak RSS is its own): forward + backward + AdamW step on real token batches
(fp32, CPU), the first step discarded as warm-up. Goals: LoRA peak RSS <= 0.5x full, LoRA step time <= 0.75x full.
A third mode, LoRA under bfloat16 autocast (what ``rolora train --bf16`` runs), shows what a CPU with bf16 matrix
units (AMX) saves per step.

Several batch shapes show where the memory goes: LoRA saves the gradients and AdamW states of the 135M weights
(~1.6 GB in fp32) but not the activations and the 49k-vocabulary logits, which grow with batch x sequence and, on a
model this small, soon outweigh what LoRA saves.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path


def run_mode(mode: str, steps: int, batch: int, seq: int, rank: int) -> dict[str, float]:
    import torch
    from transformers import AutoModelForCausalLM

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from rolora.models import prepare_generator

    from conftest import TEST_HOME

    torch.manual_seed(0)
    base = prepare_generator("smollm2-135m-instruct", TEST_HOME)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if mode in ("lora", "lora-bf16"):
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear"))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    ids = torch.randint(100, 40000, (batch, seq))
    times = []
    for _ in range(steps + 1):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "lora-bf16"):  # what train.bf16 runs
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
    step = statistics.median(times[1:])
    return {
        "step_s": step,
        "tokens_per_s": batch * seq / step,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "trainable_params": float(sum(p.numel() for p in params)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--shapes", default="1x128,1x512,4x512", help="batch x sequence length, comma-separated")
    ap.add_argument("--batch", type=int, default=4, help=argparse.SUPPRESS)
    ap.add_argument("--seq", type=int, default=512, help=argparse.SUPPRESS)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--mode", choices=["lora", "full", "lora-bf16"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mode:
        print(json.dumps(run_mode(args.mode, args.steps, args.batch, args.seq, args.rank)))
        return
    shapes = [tuple(int(x) for x in shape.lower().split("x")) for shape in args.shapes.split(",")]
    print(f"== SmolLM2-135M LoRA (r {args.rank}, all-linear) vs full, fp32 CPU, AdamW, median of {args.steps} steps")
    for batch, seq in shapes:
        res = {}
        for mode in ("full", "lora", "lora-bf16"):
            cmd = [sys.executable, __file__, "--mode", mode, f"--steps={args.steps}", f"--rank={args.rank}"]
            cmd += [f"--batch={batch}", f"--seq={seq}"]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            res[mode] = json.loads(out.strip().splitlines()[-1])
        print(f"-- batch {batch} x {seq} tokens")
        for mode, r in res.items():
            print(
                f"  {mode:<5} step {r['step_s']:.2f}s  {r['tokens_per_s']:.0f} tok/s  "
                f"peak RSS {r['peak_rss_mb']:.0f} MB  trainable {r['trainable_params'] / 1e6:.2f}M"
            )
        mem = res["lora"]["peak_rss_mb"] / res["full"]["peak_rss_mb"]
        step = res["lora"]["step_s"] / res["full"]["step_s"]
        print(f"  LoRA/full peak RSS {mem:.2f}x (goal <= 0.5)   step time {step:.2f}x (goal <= 0.75)")
        bf16 = res["lora-bf16"]["step_s"] / res["lora"]["step_s"]
        print(f"  LoRA under bf16 autocast (train.bf16) / LoRA fp32: step time {bf16:.2f}x")


if __name__ == "__main__":
    main()
