"""``python -m geomsweep [-m] key=value ...``: the Hydra app. Thin on purpose: check the config, then run the job."""

import hydra
from omegaconf import DictConfig

from geomsweep.measure import resolve_device
from geomsweep.schema import ConfigError, check


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    try:
        settings = check(cfg)
        resolve_device(settings.device)  # device=cuda on a machine without CUDA: here, not deep inside torch
    except (ConfigError, ValueError) as err:  # one line, before any model loads or any MLflow run opens
        raise SystemExit(f"geomsweep: invalid config: {err}") from None
    # torch, transformers and mlflow load only once the config is known to be good: bad values fail in a second
    from geomsweep.job import run_job  # noqa: PLC0415
    from geomsweep.tracking import StoreError  # noqa: PLC0415

    try:
        run_job(cfg, settings)
    except StoreError as err:  # no run could be opened: nothing to record it in
        raise SystemExit(f"geomsweep: {err}") from None


if __name__ == "__main__":
    main()
