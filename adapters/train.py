"""Training one role: PEFT LoRA (or full fine-tuning, same data, same loop) with TRL's ``SFTTrainer``.

Loss on the completion only (TRL's conversational prompt-completion format through the chat template), optional
packing, gradient accumulation and checkpointing, cosine/linear schedule, a seed. Validation loss every
``eval_steps``; early stopping; the best checkpoint is kept; Ctrl-C or a crash resumes with ``resume=True`` from the
last checkpoint. A progress line shows loss, tokens/s and ETA; a loss-curve PNG is saved beside the result.

With a :class:`RoleEval` (``rolora train`` gives one: ``--role-eval-rows``), each evaluation also measures the role's
own metric (the analyst's answer F1, ...) on validation rows by generating with the adapter as it stands; that metric,
not the validation loss, then picks the best checkpoint and stops the run early (a checkpoint whose general-prose
perplexity rose more than the forgetting gate allows only when every one did), and the learning curve (role metric and
forgetting vs minutes of training, resumed runs included) is saved beside the result as JSON and PNG.
``bf16`` (off by default): the forward and backward matmuls under bfloat16 autocast, the weights, LoRA and optimizer
states staying fp32; on CPUs with bf16 matrix units (Intel AMX) a raw LoRA step of SmolLM2 takes 0.61x the time
(``bench/training.py``) and a run through ``SFTTrainer`` 0.88x (README), on AVX2-only CPUs it is slower than fp32.
"""

from __future__ import annotations

import json
import logging
import math
import os
import resource
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from rolora.errors import UserError

__all__ = ["RoleEval", "TrainConfig", "TrainResult", "plot_learning_curve", "plot_loss_curve", "train"]

log = logging.getLogger("rolora.train")


class TrainConfig(BaseModel):
    """Settings of one training run; CPU-friendly defaults for SmolLM2-135M."""

    model_config = ConfigDict(extra="forbid")

    full: bool = False  # full fine-tuning instead of LoRA (for the lora-vs-full comparison)
    r: int = Field(16, ge=1, le=256)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    rslora: bool = False
    dora: bool = False
    # The CPU defaults: 30 steps of 2 examples at 1e-3 train the contracts analyst in ~14 min on 2 cores
    # (contracts-analyst@3: answer F1 0.18 vs base 0.06, all gates passed); larger budgets via max_steps/epochs.
    learning_rate: float | None = Field(None, gt=0, description="default 1e-3 for LoRA, 2e-5 for full")
    epochs: float = Field(2.0, gt=0)
    max_steps: int = Field(30, description="> 0 caps the optimizer steps; <= 0 trains `epochs` epochs")
    # batch 1 x accumulation: with a 49k vocabulary the logits of 4 x 1024 tokens alone took ~17 GB RSS on CPU
    batch_size: int = Field(1, ge=1)
    grad_accum: int = Field(2, ge=1)
    max_length: int = Field(1024, ge=64)
    packing: bool = False
    gradient_checkpointing: bool = False
    scheduler: Literal["cosine", "linear"] = "cosine"
    warmup_ratio: float = Field(0.05, ge=0, le=0.5)
    eval_steps: int = Field(20, ge=1)
    early_stopping_patience: int = Field(3, ge=0, description="0 disables early stopping")
    seed: int = 0
    torch_threads: int = Field(0, ge=0)
    # matmuls under bfloat16 autocast (weights, adapters and AdamW states stay fp32): faster on CPUs with AMX only;
    # off by default, so a run reproduces the same numbers on every CPU
    bf16: bool = False
    max_train_examples: int | None = None
    # validation loss on the first N validation rows only (each evaluation pauses training: on 2 cores 74 analyst
    # rows take ~2.5 min); None: all of them
    max_eval_examples: int | None = Field(None, ge=1)
    # wall-clock budget of this run (a resumed run gets a new one): training stops after the step that crosses it,
    # saving a checkpoint, so `--resume` continues where it stopped
    time_budget_s: float | None = Field(None, gt=0)
    # stop after this many optimizer steps although the schedule (warmup, cosine) runs over max_steps/epochs: the
    # step-count twin of time_budget_s, for a run another machine reproduces exactly
    stop_after_steps: int | None = Field(None, ge=1)
    # validation rows the role's own metric reads at each evaluation (LoRA runs given a RoleEval); 0: the validation
    # loss alone picks the best checkpoint and stops early
    role_eval_rows: int = Field(0, ge=0)
    # general-prose probe texts scored at each role evaluation to watch forgetting; a checkpoint that forgets more
    # than the gate allows is chosen only when all do. None: the forgetting gate's whole probe set (220 texts, ~36 s
    # an evaluation on 2 cores; the first 96 measured 0.5-0.8 points below the whole set), so the figure is the
    # gate's own; N: its first N; 0: the role metric alone picks
    role_eval_probe_texts: int | None = Field(None, ge=0)

    @property
    def lr(self) -> float:
        return self.learning_rate or (2e-5 if self.full else 1e-3)


@dataclass
class TrainResult:
    output: str  # adapter folder (LoRA) or model folder (full)
    kind: str  # "lora" | "full"
    steps: int
    train_loss_first: float
    train_loss_last: float
    best_eval_loss: float | None
    val_perplexity: float | None
    trainable_params: int
    total_params: int
    wall_s: float
    tokens_seen: int
    tokens_per_s: float
    peak_rss_mb: float
    loss_curve: str
    # role metric vs minutes of training, one point per evaluation (empty without a RoleEval)
    learning_curve: list[dict[str, Any]] = field(default_factory=list)
    best_role_metric: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _dataset(path: Path, limit: int | None) -> Any:
    from datasets import Dataset

    if not path.is_file():
        raise UserError(f"{path}: training data not found; build it with `rolora train` (it builds data first)")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = [{"prompt": r["prompt"], "completion": r["completion"]} for r in rows]
    if not rows:
        raise UserError(f"{path}: no examples; check the domain's corpus and QA file")
    return Dataset.from_list(rows[:limit] if limit else rows)


def plot_loss_curve(log_history: list[dict[str, Any]], out: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(h["step"], h["loss"]) for h in log_history if "loss" in h and "step" in h]
    evals = [(h["step"], h["eval_loss"]) for h in log_history if "eval_loss" in h]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss")
    if evals:
        ax.plot(*zip(*evals, strict=True), marker="o", label="validation loss")
    return _finish_plot(fig, ax, "step", "loss (completion tokens)", title, out)


def _finish_plot(fig: Any, ax: Any, xlabel: str, ylabel: str, title: str, out: Path) -> Path:
    """Label, grid and legend ``ax``, save ``fig`` to ``out`` and close it."""
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


@dataclass
class RoleEval:
    """How a run measures its role's own metric while it trains: ``score`` gets a folder holding the adapter as it
    stands (PEFT layout) and returns the role's metrics on validation rows; ``metric`` names the one that picks the
    best checkpoint and stops early (higher is better). ``close`` frees what ``score`` loaded."""

    metric: str
    score: Callable[[Path], dict[str, float]]
    close: Callable[[], None] = lambda: None
    # forgetting watched beside the metric: the % rise of the perplexity of these general-prose texts over the base
    # model's, measured on the model being trained; a checkpoint above ``max_forgetting_pct`` (the forgetting gate's
    # threshold) is chosen only when every checkpoint is above it (``selection_score``)
    probe_texts: Sequence[str] = ()
    max_forgetting_pct: float | None = None


SELECTION_KEY = "selection"  # what picks the checkpoint: the role metric, lowered by 1 when it forgets too much


def selection_score(metric: float, forgetting_pct: float | None, max_forgetting_pct: float | None) -> float:
    """The value that picks the best checkpoint: the role metric (in [0, 1]), minus 1 when the checkpoint forgets
    more than ``max_forgetting_pct`` (so any checkpoint within the limit beats every one beyond it, and among those
    beyond it the better metric still wins)."""
    over = max_forgetting_pct is not None and forgetting_pct is not None and forgetting_pct > max_forgetting_pct
    return metric - 1.0 if over else metric


def _probe_perplexity(model: Any, tokenizer: Any, texts: Sequence[str]) -> float:
    """Perplexity of ``texts`` under ``model`` as the forgetting gate scores them (its default length), in eval mode."""
    from .scoring import text_perplexity

    training = model.training
    model.eval()
    try:
        return float(text_perplexity(model, tokenizer, list(texts)))
    finally:
        model.train(training)


LEARNING_CURVE_KEY = "role_eval"  # the key of a learning-curve point in the trainer's log history


def learning_curve(log_history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The learning-curve points of a run's log history (the last one of each step: a resumed run re-measures)."""
    points = {h["step"]: h for h in log_history if LEARNING_CURVE_KEY in h}
    return [{"step": s, "minutes": h["minutes"], **h[LEARNING_CURVE_KEY]} for s, h in sorted(points.items())]


def plot_learning_curve(curve: list[dict[str, Any]], metric: str, out: Path, title: str) -> Path:
    """The role metric (and, for the analyst, citation correctness) against minutes of training."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    minutes = [p["minutes"] for p in curve]
    for key in dict.fromkeys((metric, "citation_correctness")):
        if all(key in p for p in curve):
            ax.plot(minutes, [p[key] for p in curve], marker="o", label=f"validation {key}")
    if all("forgetting_pct" in p for p in curve):
        right = ax.twinx()
        right.plot(minutes, [p["forgetting_pct"] for p in curve], "k--", marker="x", label="forgetting (%)")
        right.set_ylabel("probe perplexity rise (%)")
        right.legend(loc="lower right", fontsize=8)
    return _finish_plot(fig, ax, "minutes of training", "role metric", title, out)


def _role_eval_callback(role_eval: RoleEval, scratch: Path) -> Any:
    from transformers import TrainerCallback

    class RoleMetric(TrainerCallback):
        """At each evaluation: save the adapter as it stands, score the role metric on validation rows, add it to the
        evaluation's metrics (``eval_role_<name>``: what picks the best checkpoint and what early stopping reads) and a
        learning-curve point (minutes of training so far, the scoring itself not counted) to the log history, which
        checkpoints keep, so a resumed run's curve goes on."""

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            done = learning_curve(state.log_history)
            self.minutes0 = done[-1]["minutes"] if done else 0.0
            self.t0 = time.perf_counter()
            self.scoring_s = 0.0
            self.base_ppl: float | None = None

        def forgetting(self, model: Any, tokenizer: Any) -> float:
            from .scoring import perplexity_rise_pct

            if self.base_ppl is None:
                with model.disable_adapter():
                    self.base_ppl = _probe_perplexity(model, tokenizer, role_eval.probe_texts)
            ppl = _probe_perplexity(model, tokenizer, role_eval.probe_texts)
            return round(perplexity_rise_pct(self.base_ppl, ppl), 3)

        def on_evaluate(self, args: Any, state: Any, control: Any, metrics: Any = None, **kw: Any) -> None:
            model = kw.get("model")
            if metrics is None or model is None:
                return
            t = time.perf_counter()
            folder = scratch / f"step-{state.global_step}@1"
            shutil.rmtree(folder, ignore_errors=True)
            model.save_pretrained(str(folder))
            try:
                scores = role_eval.score(folder)
            finally:
                shutil.rmtree(folder, ignore_errors=True)
            if role_eval.metric not in scores:
                raise UserError(f"the role evaluation returned no '{role_eval.metric}' (it gave {sorted(scores)})")
            rise = None
            if role_eval.probe_texts:
                rise = scores["forgetting_pct"] = self.forgetting(model, kw.get("processing_class"))
            scores[SELECTION_KEY] = selection_score(scores[role_eval.metric], rise, role_eval.max_forgetting_pct)
            self.scoring_s += time.perf_counter() - t
            metrics.update({f"eval_role_{k}": v for k, v in scores.items()})
            minutes = self.minutes0 + (time.perf_counter() - self.t0 - self.scoring_s) / 60
            point = {"step": state.global_step, "minutes": round(minutes, 3), "eval_loss": metrics.get("eval_loss")}
            state.log_history.append({**point, LEARNING_CURVE_KEY: scores})
            log.info(
                "step %d, %.1f min: validation %s %.4f, forgetting %s %%",
                state.global_step,
                minutes,
                role_eval.metric,
                scores[role_eval.metric],
                rise,
            )

    return RoleMetric()


def _progress_callback(total_hint: int) -> Any:
    from tqdm.auto import tqdm
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        """One line per log: step, loss, validation loss, tokens/s, ETA."""

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.t0 = time.perf_counter()
            self.step0 = state.global_step
            self.tok0 = state.num_input_tokens_seen

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            logs = logs or {}
            dt = max(time.perf_counter() - self.t0, 1e-9)
            done = state.global_step - self.step0
            total = state.max_steps or total_hint
            eta = (total - state.global_step) * dt / max(done, 1)
            tps = (state.num_input_tokens_seen - self.tok0) / dt
            parts = [f"step {state.global_step}/{total}"]
            if "loss" in logs:
                parts.append(f"loss {logs['loss']:.4f}")
            if "eval_loss" in logs:
                parts.append(f"val loss {logs['eval_loss']:.4f}")
            parts += [f"{tps:.0f} tok/s", f"ETA {eta / 60:.1f} min"]
            tqdm.write(" | ".join(parts))

    return Progress()


def _budget_callback(budget_s: float | None, stop_after_steps: int | None) -> Any:
    from transformers import TrainerCallback

    class Budget(TrainerCallback):
        """Stop (evaluating and saving a checkpoint) after the first step that ends past ``budget_s`` seconds of
        this run, or at step ``stop_after_steps``."""

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.t0 = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            over_time = budget_s is not None and time.perf_counter() - self.t0 >= budget_s
            if over_time or (stop_after_steps is not None and state.global_step >= stop_after_steps):
                why = f"time budget of {budget_s:.0f} s" if over_time else f"stop_after_steps {stop_after_steps}"
                log.info("%s reached at step %d: stopping", why, state.global_step)
                control.should_training_stop = True
                control.should_save = True
                control.should_evaluate = args.eval_strategy != "no"

    return Budget()


def train(
    base_dir: Path,
    data_dir: Path,
    run_dir: Path,
    cfg: TrainConfig,
    resume: bool = False,
    progress: bool = True,
    callbacks: list[Any] | None = None,
    role_eval: RoleEval | None = None,
) -> TrainResult:
    """Train on ``data_dir/{train,validation}.jsonl``; checkpoints in ``run_dir``; the result in ``run_dir/final``.

    ``role_eval`` (LoRA only, with validation rows): the role's own metric picks the best checkpoint and stops early.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, EarlyStoppingCallback
    from transformers.trainer_utils import get_last_checkpoint
    from trl import SFTConfig, SFTTrainer

    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = get_last_checkpoint(str(run_dir)) if resume else None
    if resume and checkpoint is None:
        raise UserError(f"nothing to resume in {run_dir}: no checkpoint-* folder; run without --resume")
    if not resume:
        for old in run_dir.glob("checkpoint-*"):
            shutil.rmtree(old)
    train_ds = _dataset(data_dir / "train.jsonl", cfg.max_train_examples)
    val_path = data_dir / "validation.jsonl"
    val_ds = _dataset(val_path, cfg.max_eval_examples) if val_path.is_file() and val_path.stat().st_size else None

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    peft_config = None
    if not cfg.full:
        from peft import LoraConfig

        if cfg.dora:
            warnings.warn("DoRA adapters cannot be served by vLLM; use the in-process backend", stacklevel=2)
        peft_config = LoraConfig(
            r=cfg.r,
            lora_alpha=cfg.alpha,
            lora_dropout=cfg.dropout,
            target_modules=cfg.target_modules,
            use_rslora=cfg.rslora,
            use_dora=cfg.dora,
            task_type="CAUSAL_LM",
        )
    evaluate = val_ds is not None
    if role_eval is not None and (cfg.full or not evaluate):
        log.warning("no role metric during training: %s", "full fine-tuning" if cfg.full else "no validation rows")
        role_eval = None
    best_by = f"role_{SELECTION_KEY}" if role_eval is not None else "eval_loss"
    per_step = cfg.batch_size * cfg.grad_accum
    steps_hint = cfg.max_steps if cfg.max_steps > 0 else math.ceil(len(train_ds) / per_step * cfg.epochs)
    args = SFTConfig(
        output_dir=str(run_dir),
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps if cfg.max_steps > 0 else -1,  # transformers takes 0 as "stop after one step"
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        gradient_checkpointing=cfg.gradient_checkpointing,
        learning_rate=cfg.lr,
        lr_scheduler_type=cfg.scheduler,
        warmup_steps=round(cfg.warmup_ratio * steps_hint),
        logging_steps=max(1, min(10, cfg.eval_steps // 2, steps_hint // 5)),
        eval_strategy="steps" if evaluate else "no",
        eval_steps=cfg.eval_steps,
        save_strategy="steps",
        save_steps=cfg.eval_steps,
        save_total_limit=2,
        load_best_model_at_end=evaluate,
        metric_for_best_model=best_by,
        greater_is_better=role_eval is not None,
        max_length=cfg.max_length,
        packing=cfg.packing,
        completion_only_loss=True,
        bf16=cfg.bf16,
        fp16=False,
        use_cpu=not torch.cuda.is_available(),
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to="none",
        disable_tqdm=True,
        include_num_input_tokens_seen=True,
        dataloader_num_workers=0,
        save_only_model=False,
    )
    cbs: list[Any] = list(callbacks or [])
    if progress:
        cbs.append(_progress_callback(steps_hint))
    if cfg.time_budget_s is not None or cfg.stop_after_steps is not None:
        cbs.append(_budget_callback(cfg.time_budget_s, cfg.stop_after_steps))
    role_cb = _role_eval_callback(role_eval, run_dir / ".role-eval") if role_eval is not None else None
    if role_cb is not None:
        cbs.append(role_cb)  # before early stopping, which reads the metric it adds
    if evaluate and cfg.early_stopping_patience > 0:
        cbs.append(EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience))
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=val_ds,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=cbs,
    )
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # our progress line replaces the raw dict prints
    trained: Any = trainer.model
    trainable = sum(int(p.numel()) for p in trained.parameters() if p.requires_grad)
    total = sum(int(p.numel()) for p in trained.parameters())
    t0 = time.perf_counter()
    try:
        trainer.train(resume_from_checkpoint=checkpoint)
    finally:
        if role_eval is not None and role_cb is not None:
            role_eval.close()
            # the final evaluation below is the best checkpoint's loss only (early stopping has nothing to read there)
            trainer.remove_callback(role_cb)
            trainer.remove_callback(EarlyStoppingCallback)
            shutil.rmtree(run_dir / ".role-eval", ignore_errors=True)
    wall = time.perf_counter() - t0
    best_eval = trainer.evaluate()["eval_loss"] if evaluate else None

    final = run_dir / "final"
    tmp = run_dir / ".final.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    trainer.save_model(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    for stray in ("training_args.bin",):  # rolora never ships pickles
        (tmp / stray).unlink(missing_ok=True)
    history = trainer.state.log_history
    losses = [h["loss"] for h in history if "loss" in h]
    curve = plot_loss_curve(history, tmp / "loss_curve.png", f"{'full' if cfg.full else 'LoRA'} training")
    points = learning_curve(history)
    best_role = None
    if role_eval is not None and points:
        chosen = max(points, key=lambda p: p.get(SELECTION_KEY, p[role_eval.metric]))  # the first of equals
        best_role = chosen[role_eval.metric]
        (tmp / "learning_curve.json").write_text(json.dumps(points, indent=2))
        plot_learning_curve(points, role_eval.metric, tmp / "learning_curve.png", "LoRA training: role metric")
    result = TrainResult(
        output=str(final),
        kind="full" if cfg.full else "lora",
        steps=trainer.state.global_step,
        train_loss_first=losses[0] if losses else float("nan"),
        train_loss_last=losses[-1] if losses else float("nan"),
        best_eval_loss=best_eval,
        val_perplexity=math.exp(best_eval) if best_eval is not None else None,
        trainable_params=trainable,
        total_params=total,
        wall_s=wall,
        tokens_seen=int(trainer.state.num_input_tokens_seen),
        tokens_per_s=trainer.state.num_input_tokens_seen / max(wall, 1e-9),
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        loss_curve=str(final / curve.name),
        learning_curve=points,
        best_role_metric=best_role,
    )
    (tmp / "train_result.json").write_text(json.dumps(result.to_json(), indent=2))
    (tmp / "train_config.json").write_text(cfg.model_dump_json(indent=2))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return result
