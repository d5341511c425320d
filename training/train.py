"""The reference-model recipe: config, model, data, the training loop, evaluation on PublicTest, shipping the
fp16 safetensors, and the per-size speed probe. Its command line is `fer-train` (fer_edge.cli.train).

Checkpoint selection uses the FER-2013 PublicTest split only (there is no PrivateTest here).
"""
from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from fer_edge.data.paths import REPO_ROOT
from fer_edge.training.data import (DEFAULT_DATA_DIR, Split, class_weights, load_split, make_contract, prepare_tensor,
                                    vote_targets)
from fer_edge.training.fastpath import (compile_model, effective_lr, first_step_or_eager, new_adamw, param_groups,
                                        to_channels_last, use_channels_last, want_compile)

HISTORY_FIELDS = ["epoch", "lr", "train_loss", "train_top1", "val_top1", "val_macro_f1", "val_loss",
                  "best_top1", "epoch_time_s", "wall_time_s"]

# How fast, not what is learned: these may differ on resume (the run's saved recipe keeps everything else).
SPEED_KEYS = ("channels_last", "compile", "fused_optimizer", "foreach_ema")

DEFAULTS: Dict[str, Any] = json.loads((Path(__file__).resolve().parent / "config_cpu.json").read_text())


# ------------------------------------------------------------------------------------------- config
def load_config(path: Optional[str]) -> Dict[str, Any]:
    cfg = copy.deepcopy(DEFAULTS)
    if path:
        user = json.loads(Path(path).read_text())
        unknown = sorted(set(user) - set(cfg))
        if unknown:
            raise SystemExit(f"{path}: unknown config keys {unknown}")
        aug = {**cfg["augment"], **user.pop("augment", {})}
        cfg.update(user)
        cfg["augment"] = aug
    cfg.pop("_comment", None)
    return cfg


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_overrides(cfg: Dict[str, Any], args: argparse.Namespace) -> Dict[str, Any]:
    for key in ("epochs", "batch_size", "lr", "img_size", "threads", "seed", "device", "limit_train", "limit_val",
                "out_dir", "ema_decay", "warmup_epochs", "weight_decay", "label_smoothing", "init_from"):
        value = getattr(args, key, None)
        if value is not None:
            cfg[key] = value
    for item in args.set or []:
        if "=" not in item:
            raise SystemExit(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        target = cfg
        parts = key.split(".")
        for p in parts[:-1]:
            target = target.setdefault(p, {})
        if parts[-1] not in target:
            raise SystemExit(f"--set {key}: unknown config key")
        target[parts[-1]] = _parse_value(value)
    return cfg


# ------------------------------------------------------------------------------------------ helpers
def hardware_string(device) -> str:
    """The checkpoint's "hardware" record: the GPU, or the CPU as lscpu names it with cores and torch threads."""
    import torch
    from fer_edge.models.machine import cpu_model
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA)"
    return f"{cpu_model()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"


def new_training_model(arch: str, num_classes: int, in_chans: int = 1, drop_rate: float = 0.0,
                       drop_path_rate: float = 0.0, zero_init_head: bool = False):
    """A randomly initialised model from the one factory, with the recipe's regularisers and head init."""
    import torch
    from fer_edge.models.factory import create_model
    model = create_model(arch, num_classes, in_chans, drop_rate=drop_rate, drop_path_rate=drop_path_rate)
    if zero_init_head:
        # timm's classifier init gives train-mode logits with std ~3 over 1280 features, so training starts
        # at a cross-entropy of 4-7 instead of ln(classes) and spends its first epochs undoing that.
        head = model.get_classifier()
        with torch.no_grad():
            head.weight.zero_()
            head.bias.zero_()
    return model


def pick_device(name: str):
    import torch
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def subset(split: Split, limit: int, seed: int) -> Split:
    if not limit or limit >= len(split):
        return split
    idx = np.sort(np.random.default_rng(seed).permutation(len(split))[:limit])
    return split.subset(idx)


def evaluate(model, x, y, batch_size: int, device, num_classes: int, channels_last: bool = False):
    """Plain forward pass on prepared tensors (no TTA). Returns (confusion matrix, mean CE loss, predictions)."""
    import torch
    import torch.nn.functional as F
    from fer_edge.data.metrics import confusion_matrix
    model.eval()
    preds, loss_sum = [], 0.0
    y_t = torch.as_tensor(y)
    with torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            xb = x[start:start + batch_size].to(device)
            if channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            logits = model(xb).float().cpu()
            loss_sum += float(F.cross_entropy(logits, y_t[start:start + batch_size], reduction="sum"))
            preds.append(logits.argmax(1))
    pred = torch.cat(preds).numpy()
    return confusion_matrix(np.asarray(y), pred, num_classes), loss_sum / max(1, x.shape[0]), pred


def in_percent(scores: Dict[str, Any]) -> Dict[str, Any]:
    """fer_edge.data.metrics fractions -> percent, fer-train's unit (history.csv, checkpoints, shipped metadata)."""
    return {name: 100.0 * value if isinstance(value, float) else value for name, value in scores.items()}


def write_history(history: List[Dict[str, float]], out_dir: Path) -> None:
    with open(out_dir / "history.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=HISTORY_FIELDS, extrasaction="ignore")
        w.writeheader()
        for h in history:
            w.writerow({k: (round(v, 5) if isinstance(v, float) else v) for k, v in h.items()})
    try:
        from fer_edge.training.plots import plot_history
        plot_history(history, out_dir / "curves.png")
    except Exception as exc:  # plotting must never stop training
        print(f"warning: could not plot curves ({exc})", flush=True)


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warm-up from 1% to 100%, then cosine down to min_ratio exactly at the last step."""
    if warmup > 0 and step < warmup:
        return 0.01 + 0.99 * step / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


# ------------------------------------------------------------------------------------------- train
class TrainStep:
    """One optimisation step: forward (compiled or eager), weighted label-smoothed CE on class indices or target
    distributions (mixed when lam < 1), backward, gradient clipping, optimizer step, EMA update. Shared by
    train() and `fer-train speed`, so the speed table times the trainer's own step."""

    def __init__(self, model, forward, optimizer, ema, scaler=None, class_weight=None, label_smoothing: float = 0.0,
                 grad_clip: float = 0.0, use_amp: bool = False, amp_dtype=None):
        import torch
        self.model, self.forward, self.optimizer, self.ema = model, forward, optimizer, ema
        self.scaler = scaler if scaler is not None else torch.amp.GradScaler("cpu", enabled=False)
        self.class_weight, self.label_smoothing, self.grad_clip = class_weight, label_smoothing, grad_clip
        self.use_amp, self.amp_dtype = use_amp, amp_dtype or torch.bfloat16
        self.started = False

    def logits(self, xb):
        import torch
        with torch.autocast(device_type=xb.device.type, dtype=self.amp_dtype, enabled=self.use_amp):
            if self.started:
                return self.forward(xb)
            self.started = True  # a lazily failing torch.compile surfaces here, once
            self.forward, out = first_step_or_eager(self.forward, self.model, xb)
            return out

    def loss(self, logits, ya, yb2, lam: float):
        import torch.nn.functional as F
        kw = {"weight": self.class_weight, "label_smoothing": self.label_smoothing}
        loss = lam * F.cross_entropy(logits, ya, **kw)
        if lam < 1.0:
            loss = loss + (1 - lam) * F.cross_entropy(logits, yb2, **kw)
        return loss

    def __call__(self, xb, ya, yb2=None, lam: float = 1.0):
        """(logits as fp32, loss) after one full step."""
        import torch
        logits = self.logits(xb).float()
        loss = self.loss(logits, ya, yb2, lam)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update(self.model)
        return logits, loss


def train(cfg: Dict[str, Any], train_split: Optional[Split] = None, val_split: Optional[Split] = None,
          resume: Optional[str] = None, data_dir: Optional[str] = None, command: str = "",
          stop_after: Optional[int] = None, resume_overrides: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Run (or resume) training; returns {'best_top1', 'best_path', 'last_path', 'history', ...}.

    stop_after: leave after this many epochs of this call (the schedule still spans cfg['epochs']); resume later.
    """
    import torch
    from fer_edge.training.augment import AugmentConfig, augment_batch, mix_batch
    from fer_edge.models.checkpoint import CHECKPOINT_FORMAT, load_training_state, save_checkpoint
    from fer_edge.training.ema import ModelEma
    from fer_edge.data.metrics import summary

    state = None
    if resume:
        state = load_training_state(resume)
        saved = dict(state["config"])
        # Keep the run's recipe. Only these may change on resume: where to write, threads, device, logging
        # and (explicitly, via resume_overrides) the epoch count, which stretches or shortens the cosine tail.
        for key in ("out_dir", "threads", "device", "log_every", "eval_batch_size") + SPEED_KEYS:
            saved[key] = cfg.get(key, saved.get(key))
        for key, value in (resume_overrides or {}).items():
            if key not in ("epochs",):
                raise ValueError(f"cannot change {key!r} when resuming; only the epoch count may change")
            saved[key] = value
        cfg = saved
        print(f"resuming from {resume} after epoch {state['epoch']}", flush=True)

    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))
    torch.manual_seed(int(cfg["seed"]))
    device = pick_device(cfg["device"])
    cuda = device.type == "cuda"
    channels_last = use_channels_last(cfg["channels_last"], device)
    use_amp = cuda if cfg["amp"] == "auto" else bool(cfg["amp"]) and cuda
    amp_dtype = torch.bfloat16 if (use_amp and torch.cuda.is_bf16_supported()) else torch.float16
    if cuda:
        torch.backends.cudnn.benchmark = True

    out_dir = Path(cfg["out_dir"])
    if not out_dir.is_absolute():
        out_dir = REPO_ROOT / out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(cfg, indent=2))

    labels = list(cfg["labels"])
    contract = make_contract(cfg["arch"], labels, cfg["img_size"], cfg["mean"], cfg["std"], cfg["interpolation"])
    if train_split is None or val_split is None:
        data_dir = data_dir or str(DEFAULT_DATA_DIR)
        train_split = train_split or load_split(data_dir, "train", labels)
        val_split = val_split or load_split(data_dir, "publictest", labels)
    train_split = subset(train_split, int(cfg["limit_train"]), int(cfg["seed"]))
    val_split = subset(val_split, int(cfg["limit_val"]), int(cfg["seed"]) + 1)
    overlap = np.intersect1d(train_split.row, val_split.row)
    if overlap.size or np.any(train_split.split != 0):
        raise ValueError(f"training data holds PublicTest rows ({overlap.size} shared rows): refusing to train")

    t0 = time.time()
    x_train = prepare_tensor(train_split.x, contract)
    x_val = prepare_tensor(val_split.x, contract)
    y_hard = torch.as_tensor(train_split.y, dtype=torch.long)
    # Cross-entropy takes class indices or, with vote_targets > 0, each row's target distribution (FER+ votes).
    vote_weight = float(cfg.get("vote_targets", 0.0))  # runs saved before the option: labels only
    y_train = torch.from_numpy(vote_targets(train_split, vote_weight)) if vote_weight > 0 else y_hard
    value_range = ((0.0 - cfg["mean"][0]) / cfg["std"][0], (1.0 - cfg["mean"][0]) / cfg["std"][0])
    counts = train_split.class_counts(len(labels))
    print(f"data: train {len(train_split)} {dict(zip(labels, counts.tolist()))}, PublicTest {len(val_split)}; "
          f"prepared at {cfg['img_size']} px in {time.time() - t0:.1f}s; device {device}", flush=True)

    model = new_training_model(cfg["arch"], len(labels), 1, cfg["drop_rate"], cfg["drop_path_rate"],
                               cfg.get("zero_init_head", False)).to(device)  # runs saved before the option: off
    if cfg.get("init_from") and state is None:
        from fer_edge.training.warm_start import warm_start
        ws = warm_start(model, cfg["init_from"], cfg["arch"], labels)
        print(f"warm start from {ws['source']}: {ws['copied']} tensors copied"
              + (f", classifier fresh ({len(ws['source_labels'])} -> {len(labels)} labels)" if ws["fresh"] else ""),
              flush=True)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    ema = ModelEma(model, cfg["ema_decay"], foreach=bool(cfg.get("foreach_ema", False)))
    lr = effective_lr(cfg)
    optimizer, opt_note = new_adamw(param_groups(model, cfg["weight_decay"]), lr,
                                    bool(cfg.get("fused_optimizer", False)), device)
    bs = int(cfg["batch_size"])
    steps_per_epoch = max(1, len(train_split) // bs)
    total_steps = int(cfg["epochs"]) * steps_per_epoch
    forward, compile_note = compile_model(model, want_compile(cfg.get("compile", False), total_steps), device)
    warmup_steps = int(round(float(cfg["warmup_epochs"]) * steps_per_epoch))
    min_ratio = float(cfg["min_lr"]) / lr
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, warmup_steps, min_ratio))
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    cw = torch.as_tensor(class_weights(counts, cfg["class_weight_power"]) if cfg["class_weight_power"] else
                         np.ones(len(labels), np.float32), device=device)
    aug = AugmentConfig.from_dict(cfg["augment"])
    step = TrainStep(model, forward, optimizer, ema, scaler, cw, float(cfg["label_smoothing"]),
                     float(cfg["grad_clip"]), use_amp, amp_dtype)
    print(f"speed: batch {bs}, lr {lr:.3g}" + (f" (lr {cfg['lr']} at batch {cfg['lr_reference_batch']}, scaled "
          "linearly)" if cfg.get("lr_reference_batch") else "") + f"; {'channels_last' if channels_last else 'NCHW'}, "
          f"{opt_note}, {'foreach' if ema.foreach else 'loop'} EMA, {compile_note}", flush=True)

    start_epoch, best_top1, history, wall_prev = 0, -1.0, [], 0.0
    if state is not None:
        model.load_state_dict(state["raw_state_dict"])
        ema.load_state_dict(state["state_dict"], state.get("ema_updates", 0))
        optimizer.load_state_dict(state["optimizer"])
        sched_state = dict(state["scheduler"])
        sched_state.setdefault("lr_lambdas", [None] * len(optimizer.param_groups))  # our lambda is rebuilt above
        scheduler.load_state_dict(sched_state)
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        if state.get("rng_state") is not None:
            torch.set_rng_state(state["rng_state"])
        start_epoch, best_top1 = int(state["epoch"]), float(state["best_top1"])
        history, wall_prev = list(state.get("history", [])), float(state.get("wall_time_s", 0.0))
        command = state.get("command", command) + f" (resumed: {command})"
    hardware = hardware_string(device)
    run_start = time.time()

    def make_ckpt(epoch: int) -> Dict[str, Any]:
        return {"format": CHECKPOINT_FORMAT, "arch": cfg["arch"], "img_size": int(cfg["img_size"]), "in_chans": 1,
                "labels": labels, "mean": [float(m) for m in cfg["mean"]], "std": [float(s) for s in cfg["std"]],
                "interpolation": cfg["interpolation"], "state_dict": ema.state_dict(),
                "raw_state_dict": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler.is_enabled() else None, "ema_updates": ema.updates,
                "rng_state": torch.get_rng_state(), "epoch": epoch, "best_top1": best_top1, "config": cfg,
                "history": history, "hardware": hardware, "command": command,
                "wall_time_s": wall_prev + time.time() - run_start,
                "train_counts": counts.tolist(), "n_train": len(train_split), "n_val": len(val_split)}

    end_epoch = int(cfg["epochs"]) if not stop_after else min(int(cfg["epochs"]), start_epoch + int(stop_after))
    for epoch in range(start_epoch, end_epoch):
        t_ep = time.time()
        model.train()
        perm = torch.randperm(len(train_split))
        loss_sum, correct, seen = 0.0, 0, 0
        for i in range(steps_per_epoch):
            idx = perm[i * bs:(i + 1) * bs]
            xb, yb = x_train[idx].to(device, non_blocking=True), y_train[idx].to(device, non_blocking=True)
            label = y_hard[idx].to(device, non_blocking=True)
            xb = augment_batch(xb, aug, value_range)
            xb, ya, yb2, lam = mix_batch(xb, yb, aug)
            logits, loss = step(to_channels_last(xb, channels_last), ya, yb2, lam)
            scheduler.step()
            loss_sum += float(loss.detach()) * xb.shape[0]
            correct += int((logits.argmax(1) == label).sum())  # against the unmixed labels
            seen += xb.shape[0]
            if cfg["log_every"] and (i + 1) % int(cfg["log_every"]) == 0:
                el = time.time() - t_ep
                print(f"epoch {epoch + 1} step {i + 1}/{steps_per_epoch} loss {loss_sum / seen:.4f} "
                      f"{el / (i + 1):.3f}s/step lr {scheduler.get_last_lr()[0]:.2e}", flush=True)
        cm, val_loss, _ = evaluate(ema.module, x_val, val_split.y, int(cfg["eval_batch_size"]), device, len(labels),
                                   channels_last)
        s = in_percent(summary(cm))
        is_best = s["top1"] > best_top1
        best_top1 = max(best_top1, s["top1"])
        history.append({"epoch": epoch + 1, "lr": float(scheduler.get_last_lr()[0]), "train_loss": loss_sum / seen,
                        "train_top1": 100.0 * correct / seen, "val_top1": s["top1"], "val_macro_f1": s["macro_f1"],
                        "val_loss": val_loss, "best_top1": best_top1, "epoch_time_s": time.time() - t_ep,
                        "wall_time_s": wall_prev + time.time() - run_start})
        ckpt = make_ckpt(epoch + 1)
        save_checkpoint(ckpt, out_dir / "last.pt")
        if is_best:
            save_checkpoint(ckpt, out_dir / "best.pt")
        write_history(history, out_dir)
        h = history[-1]
        print(f"epoch {epoch + 1}/{cfg['epochs']} train_loss {h['train_loss']:.4f} train_top1 {h['train_top1']:.2f} "
              f"PublicTest(EMA) top1 {h['val_top1']:.2f} macroF1 {h['val_macro_f1']:.2f} val_loss {val_loss:.4f} "
              f"best {best_top1:.2f}{' *' if is_best else ''} time {h['epoch_time_s']:.0f}s", flush=True)
    return {"best_top1": best_top1, "best_path": out_dir / "best.pt", "last_path": out_dir / "last.pt",
            "history": history, "out_dir": out_dir}


# ----------------------------------------------------------------------------------- eval and ship
def load_weights(path):
    """(model in fp32 with the weights, header dict) from a training .pt or the shipped .safetensors."""
    from fer_edge.models.checkpoint import read_weights
    from fer_edge.models.factory import build_model
    state, meta = read_weights(path)
    model = build_model(meta["arch"], len(meta["labels"]), int(meta["in_chans"]), state)  # fp16 copied into fp32
    return model.float().eval(), meta


def eval_publictest(model, meta, data_dir, batch_size: int = 256):
    from fer_edge.data.metrics import summary
    contract = make_contract(meta["arch"], meta["labels"], meta["img_size"], meta["mean"], meta["std"],
                             meta["interpolation"])
    val = load_split(data_dir, "publictest", meta["labels"])
    x = prepare_tensor(val.x, contract)
    import torch
    cm, loss, pred = evaluate(model, x, val.y, batch_size, torch.device("cpu"), len(meta["labels"]))
    return cm, in_percent(summary(cm)), pred


def write_publictest_report(cm, meta, prefix, title: str) -> None:
    from fer_edge.data.metrics import per_class_rows, summary
    from fer_edge.training.plots import plot_confusion
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    rows = [in_percent(row) for row in per_class_rows(cm, meta["labels"])]
    s = in_percent(summary(cm))
    with open(str(prefix) + "_per_class.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["class", "precision", "recall", "f1", "support"])
        w.writeheader()
        for r in rows:
            w.writerow({k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items()})
    lines = [f"# {title}", "", f"PublicTest top-1 **{s['top1']:.2f}%**, macro-F1 **{s['macro_f1']:.2f}%** "
             f"({int(cm.sum())} images, plain forward pass, no TTA).", "",
             "| class | precision % | recall % | F1 % | support |", "| --- | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['class']} | {r['precision']:.1f} | {r['recall']:.1f} | {r['f1']:.1f} | {r['support']} |" for r in rows]
    lines += ["", "Confusion matrix (rows = true, columns = predicted):", "",
              "| true \\ pred | " + " | ".join(meta["labels"]) + " |", "| --- |" + " ---: |" * len(meta["labels"])]
    lines += [f"| {lab} | " + " | ".join(str(int(v)) for v in cm[i]) + " |" for i, lab in enumerate(meta["labels"])]
    Path(str(prefix) + ".md").write_text("\n".join(lines) + "\n")
    plot_confusion(cm, meta["labels"], str(prefix) + "_confusion.png", title)


def ship(checkpoint, out, data_dir=None, report_prefix=None, tolerance_pt: float = 0.1) -> Dict[str, Any]:
    """best.pt -> fp16 safetensors with metadata; checks the fp16 weights keep PublicTest top-1 within tolerance."""
    from fer_edge.models.checkpoint import header_from_checkpoint, load_training_state, write_safetensors
    from fer_edge.models.factory import build_model
    ckpt = load_training_state(checkpoint)
    meta = header_from_checkpoint(ckpt)
    history = ckpt.get("history", [])
    best = max(history, key=lambda h: h["val_top1"]) if history else {}
    training = {"epochs": int(ckpt["config"]["epochs"]), "best_epoch": int(ckpt["epoch"]),
                "publictest_top1": best.get("val_top1"), "publictest_macro_f1": best.get("val_macro_f1"),
                "hardware": ckpt.get("hardware", ""), "wall_time_s": float(ckpt.get("wall_time_s", 0.0)),
                "command": ckpt.get("command", ""), "selection": "best PublicTest top-1 of the EMA weights",
                "precision": "fp16 weights (load into an fp32 model)"}
    data_dir = data_dir or str(DEFAULT_DATA_DIR)
    have_data = Path(data_dir, "fer2013_publictest.npz").is_file()
    if have_data:
        model32 = build_model(meta["arch"], len(meta["labels"]), meta["in_chans"], ckpt["state_dict"])
        _, s32, _ = eval_publictest(model32.eval(), meta, data_dir)
        half = {k: (v.half() if v.is_floating_point() else v) for k, v in ckpt["state_dict"].items()}
        model32.load_state_dict(half)
        _, s16, _ = eval_publictest(model32.eval(), meta, data_dir)
        training.update({"publictest_top1": s16["top1"], "publictest_macro_f1": s16["macro_f1"],
                         "publictest_top1_fp32": s32["top1"], "publictest_macro_f1_fp32": s32["macro_f1"]})
        print(f"PublicTest fp32 weights: top1 {s32['top1']:.2f} macroF1 {s32['macro_f1']:.2f}; fp16 weights: "
              f"top1 {s16['top1']:.2f} macroF1 {s16['macro_f1']:.2f}", flush=True)
        if abs(s16["top1"] - s32["top1"]) > tolerance_pt:
            raise SystemExit(f"fp16 weights change PublicTest top-1 by {s16['top1'] - s32['top1']:+.2f} pt "
                             f"(> {tolerance_pt}); not shipping")
    path = write_safetensors(ckpt, out, training)
    size_mb = path.stat().st_size / 1e6
    print(f"wrote {path} ({size_mb:.2f} MB)", flush=True)
    result = {"path": str(path), "size_mb": size_mb, "training": training}
    if have_data:
        model, meta2 = load_weights(path)  # read the file back, exactly as a user would
        cm, s, _ = eval_publictest(model, meta2, data_dir)
        print(f"re-read {path.name}: PublicTest top1 {s['top1']:.2f} macroF1 {s['macro_f1']:.2f}", flush=True)
        result["reloaded"] = s
        if report_prefix:
            write_publictest_report(cm, meta2, report_prefix, f"{meta2['arch']} {meta2['img_size']}px, shipped fp16 weights")
    return result


def speed(sizes, batch: int = 64, steps: int = 5, threads: int = 2, arch: str = "tf_efficientnetv2_b0",
          out_csv: Optional[str] = None) -> List[Dict[str, float]]:
    """Measured training step time (batch) and single-image torch inference latency per input size."""
    import torch
    import torch.nn.functional as F
    torch.set_num_threads(threads)
    rows = []
    for size in sizes:
        model = new_training_model(arch, 7, 1)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        x = torch.randn(batch, 1, size, size)
        y = torch.randint(0, 7, (batch,))
        model.train()
        times = []
        for i in range(steps + 1):
            t = time.perf_counter()
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(); loss.backward(); opt.step()
            if i:
                times.append(time.perf_counter() - t)
        model.eval()
        lat = []
        with torch.no_grad():
            x1 = torch.randn(1, 1, size, size)
            for i in range(21):
                t = time.perf_counter()
                model(x1)
                if i:
                    lat.append(time.perf_counter() - t)
        step = float(np.median(times))
        rows.append({"img_size": size, "batch": batch, "threads": threads, "train_step_s": round(step, 4),
                     "train_epoch_min_28709": round(step * (28709 // batch) / 60, 2),
                     "infer_1img_ms": round(1000 * float(np.median(lat)), 2)})
        print(rows[-1], flush=True)
    if out_csv:
        Path(out_csv).parent.mkdir(parents=True, exist_ok=True)
        with open(out_csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    return rows
