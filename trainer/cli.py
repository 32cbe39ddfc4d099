"""Command line: ``python -m trainer [train|evaluate|tune|synthetic|prune|add-items] ...`` (default: train).

Flags default from environment variables where one is named in the help.
Input errors (missing or malformed data, an unusable bundle) print one line to
stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from trainer.config import (
    AUTO,
    CATALOG_SOFTMAX_MAX_ITEMS,
    EASE_MEMORY_BUDGET_BYTES,
    INITS,
    LEARNING_RATES,
    NEGATIVES,
    OPTIMIZERS,
    STEP_SETTINGS,
    ModelConfig,
    TrainConfig,
)
from trainer.readers import DataError, add_reader_flags

COMMANDS = ("train", "evaluate", "tune", "synthetic", "synthetic-log", "prune", "add-items")
DEFAULT_MODEL_BASE = "./models/movielens"
EXIT_INPUT_ERROR = 2


def _model_base_default() -> str:
    return os.environ.get("MODEL_BASE") or DEFAULT_MODEL_BASE


def _by_negatives(setting: str) -> str:
    """Help text: the default of a trainer.config.StepSettings field per kind of negatives."""
    return "default " + ", ".join(f"{getattr(v, setting)} with --negatives {k}" for k, v in STEP_SETTINGS.items())


def build_parser() -> argparse.ArgumentParser:
    train_defaults, model_defaults = TrainConfig(), ModelConfig()
    parser = argparse.ArgumentParser(prog="python -m trainer", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", metavar="{train,evaluate,tune,synthetic,prune,add-items}")

    train = commands.add_parser("train", help="train on a data folder and publish a bundle (the default command)")
    add_reader_flags(train)
    train.add_argument("--model-base", type=Path, default=_model_base_default(),
                       help="where versions are published [env MODEL_BASE] (default %(default)s)")
    train.add_argument("--if-missing", action="store_true",
                       help="do nothing if the model base already holds a published version "
                            "(for deployments that must not retrain on every start)")
    train.add_argument("--test-fraction", type=float, default=train_defaults.test_fraction,
                       help="share of interactions held out for evaluation; 0 trains on all (default %(default)s)")
    train.add_argument("--validation-fraction", type=float, default=train_defaults.validation_fraction,
                       help="share of the training interactions used for early stopping; 0 disables it "
                            "(default %(default)s)")
    train.add_argument("--seed", type=int, default=train_defaults.seed, help="split and initialisation seed")
    train.add_argument("--epochs", type=int, default=train_defaults.epochs, help="maximum epochs (default %(default)s)")
    train.add_argument("--patience", type=int, default=train_defaults.patience,
                       help="epochs without validation improvement before stopping (default %(default)s)")
    train.add_argument("--batch-size", type=int, default=None, help=_by_negatives("batch_size"))
    train.add_argument("--learning-rate", type=float, default=None,
                       help="default " + ", ".join(f"{v:g} with --init {k}" for k, v in LEARNING_RATES.items()))
    train.add_argument("--weight-decay", type=float, default=train_defaults.weight_decay,
                       help="decoupled (AdamW) weight decay; it updates every row of every table each step "
                            "(default %(default)s)")
    train.add_argument("--optimizer", choices=OPTIMIZERS, default=None,
                       help="lazy_adam updates only the embedding rows a batch uses; " + _by_negatives("optimizer"))
    train.add_argument("--steps-per-execution", type=int, default=None,
                       help="training steps per call into the TensorFlow graph; " + _by_negatives("steps_per_execution"))
    train.add_argument("--embedding-dim", type=int, default=model_defaults.embedding_dim,
                       help="output size of both towers (default %(default)s)")
    train.add_argument("--history-length", type=int, default=model_defaults.history_length,
                       help="history items sampled per training example; users with fewer keep all; "
                            + _by_negatives("history_length"))
    train.add_argument("--history-dropout", type=float, default=model_defaults.history_dropout,
                       help="share of each example's sampled history dropped (default %(default)s)")
    train.add_argument("--negatives", choices=(AUTO, *NEGATIVES), default=model_defaults.negatives,
                       help=f"softmax over the whole catalog, or over the batch's positives with the logQ "
                            f"correction; auto: catalog up to {CATALOG_SOFTMAX_MAX_ITEMS:,} items "
                            f"(default %(default)s)")
    train.add_argument("--in-batch-negatives", type=int, default=model_defaults.in_batch_negatives,
                       help="--negatives in_batch: negatives per batch, shared by its queries (default "
                            f"{STEP_SETTINGS['in_batch'].in_batch_negatives})")
    train.add_argument("--mask-seen", action=argparse.BooleanOptionalAction, default=model_defaults.mask_seen,
                       help="catalog softmax: leave each user's other training items out of it (default %(default)s)")
    train.add_argument("--logq-weight", type=float, default=model_defaults.logq_weight,
                       help="--negatives in_batch: exponent on the sampling probability for the logQ "
                            "correction; 0 disables it (default %(default)s)")
    train.add_argument("--init", choices=(AUTO, *INITS), default=model_defaults.init,
                       help="start from rank-<embedding dim> EASE fitted on the fit data, or from random "
                            "weights; auto: EASE while its dense items x items matrices fit "
                            f"{EASE_MEMORY_BUDGET_BYTES / 2**30:g} GiB (about 11,000 items) (default %(default)s)")
    train.add_argument("--ease-lambda", type=float, default=model_defaults.ease_lambda,
                       help="--init ease: EASE's L2 weight (default %(default)s)")
    train.add_argument("--ease-tau", type=float, default=model_defaults.ease_tau,
                       help="--init ease: > 0 fits EASE on a time-weighted co-occurrence matrix, in which two "
                            "items a user interacted with k positions apart count exp(-k / tau); 0 = plain "
                            "co-occurrence (default %(default)s)")
    train.add_argument("--init-balance", type=float, default=model_defaults.init_balance,
                       help="--init ease: share of the singular values put on the history side; 0.5 splits "
                            "them evenly between the towers (default %(default)s)")
    train.add_argument("--refit", action=argparse.BooleanOptionalAction, default=train_defaults.refit,
                       help="--init ease: when no trained epoch beats the warm start on validation, fit the "
                            "warm start again on all training interactions (fit + validation) before export "
                            "(default %(default)s)")

    evaluate = commands.add_parser("evaluate", help="recompute HR@K for a published bundle")
    where = evaluate.add_mutually_exclusive_group()
    where.add_argument("--bundle", type=Path, help="a published version folder")
    where.add_argument("--model-base", type=Path, default=_model_base_default(),
                       help="use the newest version under this folder [env MODEL_BASE] (default %(default)s)")
    evaluate.add_argument("--out", type=Path, default=None,
                          help="also write report.json and hr_at_k.png here (never into the bundle)")

    tune = commands.add_parser(
        "tune", help="cross-validate the warm start's --ease-tau / --ease-lambda on the training part (numpy, no TensorFlow)"
    )
    tune.add_argument("--data-dir", type=Path, default=None, help="as for train [env ML100K_DIR]")
    tune.add_argument("--ratings-file", type=Path, default=None, help="as for train")
    tune.add_argument("--test-fraction", type=float, default=train_defaults.test_fraction,
                      help="the share train holds out; those ratings are left out here too (default %(default)s)")
    tune.add_argument("--seed", type=int, default=train_defaults.seed,
                      help="the train/test split seed, as for train; also shuffles the folds (default %(default)s)")
    tune.add_argument("--folds", type=int, default=10, help="K of K-fold cross-validation (default %(default)s)")
    tune.add_argument("--ease-tau", type=_float_list, default=(20.0, 30.0, 40.0, 60.0, 80.0), metavar="T1,T2,...",
                      help="temporal scales to try; 0 = plain co-occurrence (default 20,30,40,60,80)")
    tune.add_argument("--ease-lambda", type=_float_list, default=(60.0, 100.0, 150.0, 200.0, 300.0), metavar="L1,L2,...",
                      help="L2 weights to try (default 60,100,150,200,300)")
    tune.add_argument("--embedding-dim", type=int, default=model_defaults.embedding_dim,
                      help="rank of the warm start = the towers' output size (default %(default)s)")
    tune.add_argument("--out", type=Path, default=None, help="also write the report as JSON here")

    synthetic = commands.add_parser("synthetic", help="publish a synthetic bundle for benchmarks")
    synthetic.add_argument("--model-base", type=Path, required=True)
    synthetic.add_argument("--items", type=int, default=1_000_000)
    synthetic.add_argument("--users", type=int, default=1000)
    synthetic.add_argument("--dim", type=int, default=32)
    synthetic.add_argument("--clusters", type=int, default=1000)
    synthetic.add_argument("--seed", type=int, default=0)

    # Retention (serving/retention.py): the oldest versions go, never one a service reports as loaded.
    prune = commands.add_parser("prune", help="remove the oldest published versions, never one a service has loaded")
    prune.add_argument("--model-base", type=Path, default=_model_base_default(), help="[env MODEL_BASE]")
    prune.add_argument("--keep", type=int, default=3, help="newest complete versions kept (default %(default)s)")
    prune.add_argument("--query-target", default=os.environ.get("QUERY_TARGET", ""),
                       help="query tier to ask what it has loaded, as the gateway's flag [env QUERY_TARGET]")
    prune.add_argument("--index-targets", default=os.environ.get("INDEX_TARGETS", ""),
                       help="index shards to ask, ';'-separated, as the gateway's flag [env INDEX_TARGETS]")
    prune.add_argument("--no-services", action="store_true", help="no service reads this model base: ask none")

    from trainer.synthetic_log import add_command as add_synthetic_log  # numpy only

    add_synthetic_log(commands)  # python -m trainer synthetic-log: a generated interaction log
    from trainer.add_items import add_command as add_add_items  # TensorFlow only when it runs

    add_add_items(commands)  # python -m trainer add-items: new items without retraining
    return parser


def run_prune(args: argparse.Namespace) -> int:
    from serving import retention

    targets = {"recsys.internal.v1.QueryService": [t for t in args.query_target.split(";") if t.strip()],
               "recsys.internal.v1.IndexService": [t for t in args.index_targets.split(";") if t.strip()]}
    if not any(targets.values()) and not args.no_services:
        raise retention.RetentionError("name the services that read this model base (--query-target, "
                                       "--index-targets), or pass --no-services if none does")
    result = retention.prune(args.model_base, args.keep, retention.ask_loaded_versions(targets))
    for version, holders in sorted(result.loaded.items()):
        print(f"version {version} is loaded by {', '.join(holders)}")
    print(f"kept {result.kept or 'nothing'}; removed {result.removed or 'nothing'}")
    return 0


def _float_list(text: str) -> tuple[float, ...]:
    """'20,30, 40' -> (20.0, 30.0, 40.0), for argparse."""
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one number")
    return values


def _positive(name: str, value: float) -> None:
    if value <= 0:
        raise DataError(f"--{name} must be positive, got {value}")


def run_train(args: argparse.Namespace) -> int:
    import time

    from serving.bundle import version_dirs
    from trainer.readers import read_dataset

    started = time.monotonic()
    if args.if_missing and (versions := version_dirs(args.model_base)):
        print(f"{args.model_base} already holds version {max(versions)}; --if-missing: not training")
        return 0

    for name in ("epochs", "embedding_dim"):
        _positive(name.replace("_", "-"), getattr(args, name))
    for name in ("learning_rate", "batch_size", "history_length", "in_batch_negatives", "steps_per_execution"):
        if getattr(args, name) is not None:
            _positive(name.replace("_", "-"), getattr(args, name))
    _positive("ease-lambda", args.ease_lambda)
    if args.ease_tau < 0:
        raise DataError(f"--ease-tau must be 0 or more, got {args.ease_tau}")
    if not 0 <= args.init_balance <= 1:
        raise DataError(f"--init-balance must be in [0, 1], got {args.init_balance}")
    if not 0 <= args.history_dropout < 1:
        raise DataError(f"--history-dropout must be in [0, 1), got {args.history_dropout}")
    for name in ("test_fraction", "validation_fraction"):
        if not 0 <= getattr(args, name) < 1:
            raise DataError(f"--{name.replace('_', '-')} must be in [0, 1), got {getattr(args, name)}")
    config = TrainConfig(
        test_fraction=args.test_fraction,
        validation_fraction=args.validation_fraction,
        seed=args.seed,
        epochs=args.epochs,
        patience=args.patience,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        weight_decay=args.weight_decay,
        optimizer=args.optimizer,
        steps_per_execution=args.steps_per_execution,
        refit=args.refit,
        model=ModelConfig(
            embedding_dim=args.embedding_dim,
            history_length=args.history_length,
            history_dropout=args.history_dropout,
            negatives=args.negatives,
            in_batch_negatives=args.in_batch_negatives,
            mask_seen=args.mask_seen,
            logq_weight=args.logq_weight,
            init=args.init,
            ease_lambda=args.ease_lambda,
            ease_tau=args.ease_tau,
            init_balance=args.init_balance,
        ),
    )
    print(f"model base: {args.model_base}")
    print(f"config: {dataclasses.asdict(config)}", flush=True)
    dataset = read_dataset(args)
    print(f"read in {time.monotonic() - started:.1f} s", flush=True)
    from trainer.train import train  # TensorFlow is imported only once the data is known to be good

    result = train(dataset, config, args.model_base, verbose=1 if sys.stdout.isatty() else 2, started=started)
    if result.bundle is not None:
        print(f"published {result.bundle}")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from serving.bundle import BundleError, version_dirs
    from trainer.evaluate import bundle_report, format_table, write_report

    bundle = args.bundle
    if bundle is None:
        versions = version_dirs(args.model_base)
        if not versions:
            raise BundleError(f"{args.model_base}: no published versions; train one with 'python -m trainer train'")
        bundle = versions[max(versions)]
    print(f"bundle: {bundle}", flush=True)
    report = bundle_report(bundle)
    print(format_table(report))
    if args.out is not None:
        write_report(report, args.out)
        print(f"wrote {args.out / 'report.json'} and {args.out / 'hr_at_k.png'}")
    return 0


def run_tune(args: argparse.Namespace) -> int:
    import json

    from trainer.readers import ReadOptions, read_folder, resolve_data_dir
    from trainer.split import split_interactions
    from trainer.tune import cross_validate, format_table

    _positive("embedding-dim", args.embedding_dim)
    if any(t < 0 for t in args.ease_tau):
        raise DataError(f"--ease-tau values must be 0 or more, got {args.ease_tau}")
    if any(lam <= 0 for lam in args.ease_lambda):
        raise DataError(f"--ease-lambda values must be positive, got {args.ease_lambda}")
    if args.folds < 2:
        raise DataError(f"--folds must be at least 2, got {args.folds}")
    if not 0 <= args.test_fraction < 1:
        raise DataError(f"--test-fraction must be in [0, 1), got {args.test_fraction}")
    data_dir = resolve_data_dir(args.data_dir)
    print(f"data: {data_dir}" + (f" (ratings: {args.ratings_file})" if args.ratings_file else ""), flush=True)
    dataset = read_folder(data_dir, ReadOptions(interactions_file=args.ratings_file))
    split_config = TrainConfig(test_fraction=args.test_fraction, seed=args.seed)  # the split train makes
    train_rows = split_interactions(len(dataset.interactions), split_config).train
    if len(train_rows) < args.folds:
        raise DataError(f"{len(train_rows)} training ratings cannot be split into {args.folds} folds")
    cells = len(set(args.ease_tau)) * len(set(args.ease_lambda))
    print(f"{len(train_rows)} training ratings (test split left out), {cells} cells x {args.folds} folds", flush=True)
    report = cross_validate(
        dataset,
        train_rows,
        args.ease_tau,
        args.ease_lambda,
        rank=args.embedding_dim,
        folds=args.folds,
        seed=args.seed,
        progress=lambda line: print(line, flush=True),
    )
    report["data_sha256"] = dataset.sha256
    report["test_fraction"] = args.test_fraction
    print(format_table(report))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


def run_synthetic(args: argparse.Namespace) -> int:
    from trainer.synthetic import SyntheticConfig, write_synthetic_bundle

    for name in ("items", "users", "dim", "clusters"):
        _positive(name, getattr(args, name))
    config = SyntheticConfig(items=args.items, users=args.users, dim=args.dim, clusters=args.clusters, seed=args.seed)
    print(f"published {write_synthetic_bundle(args.model_base, config)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in (*COMMANDS, "-h", "--help"):
        argv.insert(0, "train")
    args = build_parser().parse_args(argv)
    from serving.bundle import BundleError
    from serving.retention import RetentionError

    try:
        handler = getattr(args, "handler", None)  # sub-commands defined next to their code (synthetic-log)
        if handler:
            return handler(args)
        return {"train": run_train, "evaluate": run_evaluate, "tune": run_tune, "synthetic": run_synthetic,
                "prune": run_prune}[args.command](args)
    except (DataError, BundleError, RetentionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT_ERROR
