"""``python -m geomsweep [-m] key=value ...``: the Hydra app. Thin on purpose: the schema checks the config with
nothing heavy loaded (a bad value answers in about the time of a bare Hydra app); torch, transformers, mlflow and
TRL load only once it has passed."""

import sys

import hydra
from omegaconf import DictConfig

from geomsweep import __version__
from geomsweep.config import reference
from geomsweep.config.checks import check
from geomsweep.config.errors import ConfigError


@hydra.main(version_base="1.3", config_path="pkg://geomsweep.conf", config_name="config")
def main(cfg: DictConfig) -> None:
    try:
        settings = check(cfg)
    except ConfigError as err:  # one line, before any model loads or any MLflow run opens
        raise SystemExit(f"geomsweep: invalid config: {err}") from None
    from geomsweep.app import preflight  # noqa: PLC0415  the heavy layers, once the config is known to be good

    preflight.run(cfg, settings)


def entry() -> None:
    """The ``geomsweep`` command and ``python -m geomsweep``: Hydra's own flags, ``--version``, and ``--help GROUP``
    (one group's fields; Hydra's ``--help`` takes no argument)."""
    if sys.argv[1:] == ["--version"]:
        print(f"geomsweep {__version__}")
        return
    if len(sys.argv) == 3 and sys.argv[1] == "--help" and "=" not in sys.argv[2]:
        try:
            print(reference.group_help(sys.argv[2]), end="")
        except KeyError as err:
            raise SystemExit(f"geomsweep: {err.args[0]}") from None
        return
    try:
        main()
    except KeyboardInterrupt:  # the job's run is already closed KILLED (app/job.py): one line, not a traceback
        print(
            "geomsweep: interrupted (Ctrl-C); an open run ended KILLED, and re-running runs its cell again",
            file=sys.stderr,
        )
        raise SystemExit(130) from None


if __name__ == "__main__":
    entry()
