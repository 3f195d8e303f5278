"""The ``hmarl`` command line: every pipeline step, plus config inspection."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import yaml

from hmarl.config import ConfigError, HmarlConfig, build_config, config_dict, load_config
from hmarl.errors import HmarlError
from hmarl.steps import STEP_NAMES

DEFAULT_PARAMS = "params.yaml"


def _pairs(items: list[str] | None, flag: str) -> dict[str, str]:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise HmarlError(f"{flag} {item!r}: expected NAME=PATH")
        k, v = item.split("=", 1)
        out[k] = v
    return out


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", default=None, help=f"params file (default: {DEFAULT_PARAMS})")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override one parameter (repeatable), e.g. --set profile=full --set splits.n_folds=4",
    )


def _cmd_step(args: argparse.Namespace) -> int:
    from hmarl.steps.runner import execute

    cfg = load_config(args.params or DEFAULT_PARAMS, args.overrides)
    metrics = execute(
        args.name,
        cfg,
        _pairs(args.input, "--input"),
        _pairs(args.output, "--output"),
        args.metrics if args.metrics != "-" else None,
    )
    print(json.dumps(metrics, sort_keys=True))
    return 0


def _cmd_steps(args: argparse.Namespace) -> int:
    from hmarl.steps.runner import step_module

    for name in STEP_NAMES:
        mod = step_module(name)
        doc = (mod.__doc__ or "").strip().splitlines()[0] if mod.__doc__ else ""
        print(f"{name:18s} {doc}")
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    cfg = load_config(args.params or DEFAULT_PARAMS, args.overrides)
    print(yaml.safe_dump(config_dict(cfg), sort_keys=False), end="")
    return 0


def _serving_config(args: argparse.Namespace, registry: bool) -> HmarlConfig | None:
    """Config of ``act`` / ``evaluate``: the params file when one is given or ``params.yaml`` is here;
    outside a project the defaults when a registry URI must be resolved (a desk's empty folder, a pod),
    else None (a bundle folder brings its own params; nothing is tracked). ``MLFLOW_TRACKING_URI``, when
    set, names the tracking server / registry."""
    if args.params is not None or Path(DEFAULT_PARAMS).is_file():
        cfg = load_config(args.params or DEFAULT_PARAMS, args.overrides)
    elif args.overrides:
        raise ConfigError(f"--set needs a params file (--params; no {DEFAULT_PARAMS} here)")
    elif registry:
        cfg = build_config({})
    else:
        return None
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        cfg = cfg.model_copy(update={"tracking": cfg.tracking.model_copy(update={"mlflow_uri": uri})})
    return cfg


def _cmd_act(args: argparse.Namespace) -> int:
    from hmarl.serve.act import act, render, write_output

    # params: a registry URI's tracking.mlflow_uri, and when given the desk limits; a bundle folder
    # otherwise brings its own
    registry = args.model.startswith("models:/")
    cfg = _serving_config(args, registry) if registry or args.params is not None else None
    fmt = args.format or ("csv" if args.out and args.out.endswith(".csv") else "json")
    write_output(render(act(args.model, args.data, cfg, args.positions, args.state), fmt), args.out)
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from hmarl.evaluation.aggregate import json_safe
    from hmarl.serve.evaluate import evaluate_model

    # the params give the evaluation settings (walk_forward, tracking); the model keeps its own
    doc = evaluate_model(
        args.model, args.data, args.out, _serving_config(args, args.model.startswith("models:/"))
    )
    print(json.dumps(json_safe({"out": args.out, "policy": doc["policy"]}), sort_keys=True))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hmarl", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("step", help="run one pipeline step", description="Run one pipeline step.")
    p.add_argument("name", choices=STEP_NAMES, help="step name")
    _add_config_args(p)
    p.add_argument("--input", action="append", metavar="NAME=PATH", help="override an input path")
    p.add_argument("--output", action="append", metavar="NAME=PATH", help="override an output path")
    p.add_argument(
        "--metrics",
        default=None,
        metavar="PATH",
        help="write the step's metrics JSON here (default: metrics/<step>.json; '-' for none)",
    )
    p.set_defaults(func=_cmd_step)

    p = sub.add_parser("steps", help="list the pipeline steps", description="List the pipeline steps.")
    p.set_defaults(func=_cmd_steps)

    p = sub.add_parser(
        "config",
        help="print the resolved configuration",
        description="Validate params (profile + overrides applied) and print them.",
    )
    _add_config_args(p)
    p.set_defaults(func=_cmd_config)

    p = sub.add_parser(
        "act",
        help="target orders for the newest bar",
        description="Load a model bundle (folder or models:/name@alias) and decide for the newest bar of --data.",
    )
    _add_config_args(p)
    p.add_argument("--model", required=True, help="bundle folder or models:/<name>@<alias>")
    p.add_argument("--data", required=True, help="canonical bar folder (the ingest step's output format)")
    p.add_argument("--out", default=None, help="write here (atomic) instead of printing")
    p.add_argument("--format", choices=("json", "csv"), default=None, help="default: from --out, else json")
    p.add_argument(
        "--positions",
        default=None,
        help="the account: JSON or CSV of symbol, shares, entry_price plus cash (default: flat, env.initial_cash)",
    )
    p.add_argument(
        "--state",
        default=None,
        help="JSON file carrying the master's last decision between calls (read if present, written after): "
        "the directive then holds between master bars as in training; without it every call is a master bar",
    )
    p.set_defaults(func=_cmd_act)

    p = sub.add_parser(
        "evaluate",
        help="evaluate a model on a dataset",
        description="Evaluate a model bundle (folder or models:/name@alias) on every bar of --data past the "
        "feature warm-up: the policy and every baseline at every cost level; writes OUT/metrics.json, "
        "OUT/report.html (+ report.md, evaluation.json, period/).",
    )
    _add_config_args(p)
    p.add_argument("--model", required=True, help="bundle folder or models:/<name>@<alias>")
    p.add_argument("--data", required=True, help="canonical bar folder (the ingest step's output format)")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=_cmd_evaluate)

    from hmarl.pipeline_cli import add_parser as add_pipeline_parser

    add_pipeline_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if getattr(args, "command", None) == "step" and args.metrics is None:
        args.metrics = f"metrics/{args.name}.json"
    try:
        return args.func(args)
    except (ConfigError, HmarlError) as exc:
        print(f"hmarl: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
