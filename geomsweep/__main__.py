"""``python -m geomsweep [-m] key=value ...``: the Hydra app. Thin on purpose; the work is in geomsweep.job."""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from geomsweep.job import run_job

    run_job(cfg)


if __name__ == "__main__":
    main()
