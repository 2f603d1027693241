"""``python -m geomsweep [-m] key=value ...``: the Hydra app. Thin on purpose: check the config, then run the job."""

import hydra
from omegaconf import DictConfig

from geomsweep.schema import ConfigError, check


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    try:
        settings = check(cfg)
    except ConfigError as err:  # one line, before any model loads or any MLflow run opens
        raise SystemExit(f"geomsweep: invalid config: {err}") from None
    # torch, transformers and mlflow load only once the config is known to be good: bad values fail in a second
    from geomsweep.job import run_job  # noqa: PLC0415

    run_job(cfg, settings)


if __name__ == "__main__":
    main()
