"""``gmn-train``: train a graph metanetwork on a model folder from a JSON or TOML config.

::

    gmn-train config.toml                       # settings: gmn_models.training.TrainConfig
    gmn-train config.toml --epochs 20 --out runs/b --resume
    gmn-train config.json --set hidden=32 --set 'split=[0.7, 0.15, 0.15]'
    torchrun --nproc_per_node=4 -m gmn_models.train_cli config.toml   # data-parallel

Paths in the config file are relative to the file; paths given as options are relative to the
working directory. Exit status 1 with a one-line message for a bad config or model folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

from .datasets import ModelFolderError
from .training import ConfigError, TrainConfig, train

__all__ = ["main", "load_config"]


def load_config(path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a ``.json`` or ``.toml`` config file; ``dataset``, ``out`` and ``cache_dir`` given
    in the file are relative to its folder; ``overrides`` (already resolved) win."""
    path = Path(path)
    try:
        if path.suffix == ".toml":
            try:
                import tomllib
            except ImportError:  # Python 3.10
                raise ConfigError(f"{path}: TOML configs need Python 3.11 (tomllib); use JSON") from None
            values = tomllib.loads(path.read_text(encoding="utf-8"))
        elif path.suffix == ".json":
            values = json.loads(path.read_text(encoding="utf-8"))
        else:
            raise ConfigError(f"{path}: config files are .json or .toml")
    except ConfigError:
        raise
    except ValueError as exc:  # JSONDecodeError, TOMLDecodeError
        raise ConfigError(f"{path}: not a valid config file ({str(exc).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: the config must be a table / object of settings")
    for key in ("dataset", "out", "cache_dir"):
        if isinstance(values.get(key), str):
            values[key] = os.fspath(path.parent / values[key])
    values.update(overrides or {})
    return TrainConfig.from_dict(values)


def _parse_set(items: tuple[str, ...]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; VALUE is JSON when it parses, else a plain string."""
    values: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--set")
        try:
            values[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            values[key.strip()] = raw
    return values


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("config", type=click.Path(exists=True, dir_okay=False))
@click.option("--dataset", type=click.Path(file_okay=False), help="model folder (overrides the config)")
@click.option("--out", type=click.Path(file_okay=False), help="output directory")
@click.option("--epochs", type=int, help="maximum number of epochs")
@click.option("--lr", type=float, help="learning rate")
@click.option("--batch-size", type=int, help="graphs per batch (per process under torchrun)")
@click.option("--seed", type=int, help="training seed")
@click.option("--patience", type=int, help="early stopping patience (epochs)")
@click.option("--resume/--no-resume", default=None, help="continue the run in --out from its checkpoint")
@click.option("--overwrite", is_flag=True, default=None, help="start over in an --out that holds a run")
@click.option("--progress/--no-progress", default=None, help="progress bars (default: on a terminal)")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="any other config setting; VALUE is JSON (repeatable)")
def main(config: str, settings: tuple[str, ...], **options: Any) -> None:
    """Train a GMN on the model folder named in CONFIG (a .json or .toml file whose keys are
    the fields of gmn_models.training.TrainConfig) and write checkpoints, log.csv, plots and
    metrics.json to its output directory."""
    overrides = _parse_set(settings)
    overrides.update({k: v for k, v in options.items() if v is not None})
    for key in ("dataset", "out"):
        if key in overrides and isinstance(overrides[key], str):
            overrides[key] = os.path.abspath(overrides[key])
    try:
        cfg: TrainConfig = load_config(config, overrides)
        result = train(cfg)
    except (ConfigError, ModelFolderError) as exc:
        raise click.ClickException(str(exc)) from None
    if int(os.environ.get("RANK", "0")) == 0:
        _report(result.metrics, str(result.out_dir))


def _report(metrics: dict[str, Any], out: str) -> None:
    def fmt(split: dict | None) -> str:
        if not split:
            return "-"
        return ", ".join(f"{k} {split[k]:.4g}" if isinstance(split[k], float) else f"{k} {split[k]}"
                         for k in ("mse", "r2", "kendall_tau") if k in split)

    click.echo(f"best epoch {metrics['best_epoch']} of {metrics['epochs_run']}"
               f"{' (stopped early)' if metrics['stopped_early'] else ''}")
    click.echo(f"validation: {fmt(metrics['val'])}")
    click.echo(f"test: {fmt(metrics['test'])}")
    click.echo(f"outputs in {out}")


if __name__ == "__main__":
    main()
