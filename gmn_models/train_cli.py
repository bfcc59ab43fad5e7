"""``gmn-train``: train a graph metanetwork on a model folder from a JSON or TOML config.

::

    gmn-train config.toml                       # settings: gmn_models.train_config.TrainConfig
    gmn-train config.toml --epochs 20 --out runs/b --resume
    gmn-train config.json --set hidden=32 --set 'split=[0.7, 0.15, 0.15]'
    torchrun --nproc_per_node=4 -m gmn_models.train_cli config.toml   # data-parallel

Paths in the config file are relative to the file; paths given as options are relative to the
working directory. The output folder must be new or empty; one holding a previous run needs
``--resume`` or ``--overwrite``, any other non-empty folder ``--overwrite``
(:mod:`gmn_models.train_config`).

Errors: a bad config file or setting, model folder, output folder or checkpoint is one line on
stderr, ``gmn-train: error: ...``, with exit status 1 and, for the config, before anything is
written; a misused command line (unknown option, ``--epochs abc``, ``--set`` without ``=``) is
the same kind of line with exit status 2. ``--debug`` shows the traceback instead; an
unexpected error prints one line that says so. Ctrl-C prints ``gmn-train: interrupted``
(exit status 130).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from .datasets import ModelFolderError
from .train_config import OUTPUT_NAMES, ConfigError, TrainConfig, first_line, is_run_folder
from .training import train

__all__ = ["main", "load_config"]

_PROG = "gmn-train"
_EXPECTED = (ConfigError, ModelFolderError, OSError)


def load_config(path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read and validate a ``.json`` or ``.toml`` config file; ``dataset``, ``out`` and
    ``cache_dir`` given in the file are relative to its folder; ``overrides`` (already
    resolved) win. Raises :class:`ConfigError` (one line, naming the file, and for a syntax
    error the parser's position) for a missing, unreadable or malformed file or a bad setting."""
    path = Path(path)
    values = _read_config_file(path)
    for key in ("dataset", "out", "cache_dir"):
        if isinstance(values.get(key), str) and values[key]:
            values[key] = os.fspath(path.parent / values[key])
    values.update(overrides or {})
    return TrainConfig.from_dict(values)


def _read_config_file(path: Path) -> dict[str, Any]:
    """The table of settings in ``path``; :class:`ConfigError` otherwise."""
    if path.suffix not in (".json", ".toml"):
        raise ConfigError(f"{path}: config files are .json or .toml")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        reason = exc.strerror or first_line(exc)
        raise ConfigError(f"{path}: cannot read the config file ({reason})") from None
    values = _parse_toml(path, text) if path.suffix == ".toml" else _parse_json(path, text)
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: the config must be a table / object of settings, "
                          f"not a {type(values).__name__}")
    return values


def _parse_json(path: Path, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}, column {exc.colno}"
        raise ConfigError(f"{path}: invalid JSON at {where}: {exc.msg}") from None
    except (ValueError, RecursionError) as exc:  # an int of too many digits, nesting too deep
        raise ConfigError(f"{path}: invalid JSON ({first_line(exc)})") from None


def _parse_toml(path: Path, text: str) -> Any:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        raise ConfigError(f"{path}: TOML configs need Python 3.11 (tomllib); use JSON") from None
    try:
        return tomllib.loads(text)
    except (ValueError, RecursionError) as exc:  # TOMLDecodeError: "... (at line L, column C)"
        raise ConfigError(f"{path}: invalid TOML: {first_line(exc)}") from None


def _parse_set(items: tuple[str, ...]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; VALUE is JSON when it parses, else a plain string (the config
    validation then names the key and value that do not fit)."""
    values: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--set")
        try:
            values[key.strip()] = json.loads(raw)
        except (ValueError, RecursionError):
            values[key.strip()] = raw
    return values


def _check_config_file_survives(config: str, cfg: TrainConfig) -> None:
    """Refuse to replace the config file itself with the run's own output of that name (a
    non-empty folder that is not a run, written into with --overwrite)."""
    path = Path(config).resolve()
    if (cfg.overwrite and path.name in OUTPUT_NAMES and path.parent == Path(cfg.out).resolve()
            and not is_run_folder(cfg.out)):
        raise ConfigError(f"the run would replace the config file {config} with its own {path.name}; "
                          "move the config or choose another --out")


class _OneLineErrors(click.Command):
    """A command whose errors are one line on stderr, ``gmn-train: error: ...``, with click's
    exit status (1, or 2 for a misused command line); Ctrl-C is ``interrupted``, status 130."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        try:
            value = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as exc:
            _fail(f"{exc.format_message()} (see {_PROG} --help)", exc.exit_code)
        except click.ClickException as exc:
            _fail(exc.format_message(), exc.exit_code)
        except click.Abort:
            _fail("interrupted", 130, prefix=f"{_PROG}: ")
        if standalone_mode:
            sys.exit(value if isinstance(value, int) else 0)
        return value


def _fail(message: str, status: int, prefix: str = f"{_PROG}: error: ") -> NoReturn:
    click.echo(prefix + " ".join(message.split("\n")), err=True)
    sys.exit(status)


@click.command(cls=_OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("config", type=click.Path())
@click.option("--dataset", type=click.Path(file_okay=False), help="model folder (overrides the config)")
@click.option("--out", type=click.Path(file_okay=False),
              help="output folder: new or empty, or a previous run with --resume / --overwrite")
@click.option("--epochs", type=int, help="maximum number of epochs")
@click.option("--lr", type=float, help="learning rate")
@click.option("--batch-size", type=int, help="graphs per batch (per process under torchrun)")
@click.option("--seed", type=int, help="training seed")
@click.option("--patience", type=int, help="early stopping patience (epochs)")
@click.option("--resume/--no-resume", default=None,
              help="continue the run in --out from its checkpoint (a new or empty --out starts one)")
@click.option("--overwrite", is_flag=True, default=None,
              help="start over in an --out that holds a run, or write into a non-empty --out that does "
                   "not (files named like the run's outputs are replaced)")
@click.option("--progress/--no-progress", default=None, help="progress bars (default: on a terminal)")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="any other config setting; VALUE is JSON (repeatable)")
@click.option("--debug", is_flag=True, help="show the traceback of an error")
def main(config: str, settings: tuple[str, ...], debug: bool, **options: Any) -> None:
    """Train a GMN on the model folder named in CONFIG (a .json or .toml file whose keys are
    the fields of gmn_models.train_config.TrainConfig) and write gmn-run.json, checkpoints,
    log.csv, plots and metrics.json to its output folder.

    The output folder must be new or empty. One holding a previous run (gmn-run.json) needs
    --resume to continue it or --overwrite to start over; any other non-empty folder is refused
    unless --overwrite. Errors are one line (exit status 1); --debug shows the traceback."""
    try:
        result = _train(config, settings, options)
    except click.ClickException:
        raise
    except _EXPECTED as exc:
        if debug:
            raise
        raise click.ClickException(str(exc) or type(exc).__name__) from None
    except Exception as exc:
        if debug:
            raise
        raise click.ClickException(f"unexpected {type(exc).__name__}: {first_line(exc)} "
                                   "(run again with --debug for the traceback)") from None
    if int(os.environ.get("RANK", "0")) == 0:
        _report(result.metrics, str(result.out_dir))


def _train(config: str, settings: tuple[str, ...], options: dict[str, Any]):
    """Resolve the overrides, load the config, train; returns the :class:`TrainResult`."""
    overrides = _parse_set(settings)
    overrides.update({k: v for k, v in options.items() if v is not None})
    for key in ("dataset", "out"):
        if isinstance(overrides.get(key), str) and overrides[key]:
            overrides[key] = os.path.abspath(overrides[key])
    cfg = load_config(config, overrides)
    _check_config_file_survives(config, cfg)
    return train(cfg)


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
