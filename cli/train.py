"""`fer-train`: the command line of the reference-model recipe (fer_edge.training.train)."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import List, Optional

from fer_edge.cli_support import new_parser, run_cli
from fer_edge.models.checkpoint import load_checkpoint
from fer_edge.runtime.errors import FerEdgeError
# training.train imports torch only inside its functions, so _passive_omp below still runs before torch loads.
from fer_edge.training import train as T

TRAIN_DOC = """Train timm tf_efficientnetv2_b0 on FER-2013 (or FER+) and ship the bundled models.

    fer-train --config training/config_cpu.json             # train (CPU recipe); --resume RUN/last.pt to continue
    fer-train --config training/config_cpu.json --init-from RUN/best.pt --img-size 64 --epochs 16 --lr 0.001
                                                            # a second cycle from a run's weights (new schedule)
    fer-train --config training/config_cpu_ferplus.json --init-from models/reference_model/fer2013_tf_efficientnetv2_b0.safetensors
                                                            # FER+ (8 classes) from the FER-2013 backbone
    fer-train --config training/config_cpu_ferplus.json --set vote_targets=1.0 --label-smoothing 0
                                                            # ... on each face's FER+ vote distribution, not the
                                                            # majority (0.3 on FER-2013: 0.7 label + 0.3 votes)
    fer-train --config training/config_default.json         # train (GPU recipe)
    fer-train ship --checkpoint RUN/best.pt --out models/reference_model/fer2013_tf_efficientnetv2_b0.safetensors
    fer-train eval --weights FILE.{pt,safetensors} --report-prefix benchmarks/results/training_publictest
    fer-train speed                                         # images/s: old CPU path vs fast path, side by side
    fer-train speed --loss-check 300                        # ... and the loss curves of both from one seed
    fer-train speed --sizes 48 64 96                        # step time / latency per input size

Checkpoint selection uses the FER-2013 PublicTest split only (there is no PrivateTest here).
"""

SUBCOMMANDS = ("ship", "eval", "speed")


def build_parser() -> argparse.ArgumentParser:
    p = new_parser("fer-train", description=TRAIN_DOC)
    p.add_argument("--config", help="JSON recipe (training/config_cpu.json or training/config_default.json)")
    p.add_argument("--data-dir", default=str(T.DEFAULT_DATA_DIR), help="folder with the FER-2013 npz files")
    p.add_argument("--out-dir", dest="out_dir", help="run folder (last.pt, best.pt, history.csv, curves.png)")
    p.add_argument("--resume", help="continue from a last.pt")
    p.add_argument("--init-from", dest="init_from", metavar="WEIGHTS",
                   help="start a new run from these weights (.pt or .safetensors); fresh optimizer and schedule, "
                        "fresh classifier when the labels differ (e.g. FER-2013 -> FER+)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", dest="batch_size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--weight-decay", dest="weight_decay", type=float)
    p.add_argument("--warmup-epochs", dest="warmup_epochs", type=float)
    p.add_argument("--label-smoothing", dest="label_smoothing", type=float)
    p.add_argument("--ema-decay", dest="ema_decay", type=float)
    p.add_argument("--img-size", dest="img_size", type=int)
    p.add_argument("--threads", type=int, help="torch.set_num_threads (CPU); 0 keeps torch's default")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto, cpu or cuda[:N]")
    p.add_argument("--limit-train", dest="limit_train", type=int, help="random subset of Training (smoke runs)")
    p.add_argument("--limit-val", dest="limit_val", type=int, help="random subset of PublicTest (smoke runs)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any config key, e.g. augment.pad=2")
    p.add_argument("--stop-after", dest="stop_after", type=int, help="stop after N epochs of this call (resume later)")
    p.add_argument("--print-config", action="store_true", help="print the merged config and exit")
    return p


def build_sub_parser(sub: str) -> argparse.ArgumentParser:
    p = new_parser(f"fer-train {sub}")
    p.add_argument("--data-dir", default=str(T.DEFAULT_DATA_DIR))
    if sub == "ship":
        p.add_argument("--checkpoint", required=True)
        p.add_argument("--out", default=str(T.REPO_ROOT / "models" / "reference_model" / "fer2013_tf_efficientnetv2_b0.safetensors"))
        p.add_argument("--report-prefix", default=None)
    elif sub == "eval":
        p.add_argument("--weights", required=True)
        p.add_argument("--report-prefix", default=None)
    else:
        p.add_argument("--sizes", type=int, nargs="+", default=None,
                       help="per-size probe (step time, latency) instead of the configuration comparison")
        p.add_argument("--batch", type=int, default=64, help="--sizes probe only")
        p.add_argument("--steps", type=int, default=5, help="--sizes probe only")
        p.add_argument("--threads", type=int, default=2)
        p.add_argument("--out-csv", default=None, help="--sizes probe only")
        p.add_argument("--img-size", type=int, default=48)
        p.add_argument("--rounds", type=int, default=5, help="round-robin rounds (each: one block per configuration)")
        p.add_argument("--block", type=int, default=5, help="timed steps per configuration per round")
        p.add_argument("--warmup", type=int, default=3, help="untimed steps per configuration (compilation)")
        p.add_argument("--loss-check", type=int, default=0, metavar="STEPS",
                       help="also train old and fast path STEPS steps from one seed and compare the loss curves")
        p.add_argument("--loss-tolerance", type=float, default=None, metavar="X",
                       help="max |difference| of 50-step loss means that passes (default: measured, as the "
                            "baseline's own difference when started from another seed)")
        p.add_argument("--no-speed", action="store_true", help="with --loss-check: skip the speed table")
        p.add_argument("--out-prefix", default=None,
                       help="results prefix (.json/.md); default benchmarks/results/train_speed_cpu")
    return p


def _passive_omp() -> None:
    """Shared CPUs: make idle OpenMP threads sleep instead of spin. Measured on the 2-core dev box while other
    jobs ran: batch-64 step at 48 px took 23.3 s with torch's default spin-wait, 2.6 s with PASSIVE. Must be set
    before torch starts its thread pool; an explicit OMP_WAIT_POLICY in the environment wins."""
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _check_config_file(path: Optional[str]) -> None:
    if path is None:
        return
    fix = "pass training/config_cpu.json, training/config_default.json or your own JSON recipe"
    try:
        json.loads(Path(path).read_text())
    except OSError as exc:
        raise FerEdgeError(f"--config {path}: cannot read it ({exc.strerror}); {fix}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FerEdgeError(f"--config {path}: not valid JSON ({exc}); fix the file or {fix}") from None


def _check_weights_file(path: Optional[str]) -> None:
    """Read a checkpoint once with fer-export's reader before any work: a missing, empty or corrupt file then
    fails with one line that names it, instead of a torch traceback minutes into a run."""
    if path is not None:
        load_checkpoint(path)


@contextlib.contextmanager
def _training_errors():
    """The training code reports bad input as SystemExit(message), ValueError or FileNotFoundError; show those
    as the one-line CLI error. argparse's own exits carry an int code and pass through."""
    try:
        yield
    except SystemExit as exc:
        if isinstance(exc.code, str):
            raise FerEdgeError(exc.code) from None
        raise
    except (ValueError, FileNotFoundError) as exc:
        raise FerEdgeError(str(exc)) from None


def _run_sub(sub: str, argv: List[str]) -> int:
    a = build_sub_parser(sub).parse_args(argv)
    if sub == "ship":
        _check_weights_file(a.checkpoint)
        res = T.ship(a.checkpoint, a.out, a.data_dir, a.report_prefix)
        print(json.dumps(res, indent=2, default=str))
    elif sub == "eval":
        _check_weights_file(a.weights)
        model, meta = T.load_weights(a.weights)
        cm, s, _ = T.eval_publictest(model, meta, a.data_dir)
        print(json.dumps(s))
        if a.report_prefix:
            T.write_publictest_report(cm, meta, a.report_prefix, f"{meta['arch']} {meta['img_size']}px ({Path(a.weights).name})")
    elif a.sizes:
        T.speed(a.sizes, a.batch, a.steps, a.threads, out_csv=a.out_csv)
    else:
        _run_speed_comparison(a, "fer-train speed " + " ".join(argv))
    return 0


def _run_speed_comparison(a: argparse.Namespace, command: str) -> None:
    from fer_edge.training import speed as S
    prefix = a.out_prefix or S.RESULTS_PREFIX
    if not a.no_speed:
        machine = S.machine_info(a.threads)  # load average before the run, not caused by it
        rows = S.measure(size=a.img_size, block=a.block, rounds=a.rounds, warmup=a.warmup, threads=a.threads)
        print("\n".join(S.format_table(rows)), flush=True)
        path = S.write_results({"speed": {"command": command, "machine": machine, "img_size": a.img_size,
                                          "rounds": a.rounds, "block": a.block, "warmup": a.warmup, "rows": rows}},
                               prefix)
        print(f"wrote {path} and .md", flush=True)
    if a.loss_check:
        check = S.loss_check(steps=a.loss_check, size=a.img_size, threads=a.threads, data_dir=a.data_dir,
                             tolerance=a.loss_tolerance)
        check["command"] = command
        print(f"loss check: max |window-mean difference| {check['max_abs_diff_windowed']} "
              f"(tolerance {check['tolerance']}, {check['tolerance_source']}): "
              f"{'PASS' if check['passed'] else 'FAIL'}", flush=True)
        path = S.write_results({"loss_check": check}, prefix)
        print(f"wrote {path} and .md", flush=True)


def _run_train(argv: List[str], command: str) -> int:
    args = build_parser().parse_args(argv)
    _check_config_file(args.config)
    cfg = T.apply_overrides(T.load_config(args.config), args)
    if args.print_config:
        print(json.dumps(cfg, indent=2))
        return 0
    _check_weights_file(args.resume)
    _check_weights_file(args.init_from)
    if args.resume and args.init_from:
        raise SystemExit("--resume and --init-from exclude each other: resume continues a run, init-from starts one")
    resume_overrides = {"epochs": args.epochs} if (args.resume and args.epochs is not None) else None
    res = T.train(cfg, resume=args.resume, data_dir=args.data_dir, command=command,
                stop_after=args.stop_after, resume_overrides=resume_overrides)
    print(f"done: best PublicTest top-1 {res['best_top1']:.2f} -> {res['best_path']}", flush=True)
    return 0


def _main(argv: List[str]) -> int:
    _passive_omp()
    command = "fer-train " + " ".join(argv)
    with _training_errors():
        if argv and argv[0] in SUBCOMMANDS:
            return _run_sub(argv[0], argv[1:])
        return _run_train(argv, command)


def main(argv=None) -> int:
    return run_cli("fer-train", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
