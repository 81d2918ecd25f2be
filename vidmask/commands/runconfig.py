"""The config of a training command: a YAML file and overrides, or a run folder to resume."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from vidmask.config import Config, ConfigError, load_config, rebase_paths

log = logging.getLogger(__name__)


def config_from_args(config: str | None, overrides: list[str], resume: str | None,
                     defaults: tuple[str, ...] = ()) -> Config:
    """`defaults` come before the user's overrides; a resumed run starts from its saved config.yaml.

    ``finetune.init`` sets the model keys it fixes (:func:`resolve_init`: a CLIP's architecture, or the
    model section of the vidmask run it points into; ``model.KEY=VALUE`` overrides on the command line win
    over the latter; a warning names each key it changes); a resumed run's config.yaml holds them already."""
    if resume:
        saved = Path(resume) / "config.yaml"
        if not saved.is_file():
            raise ConfigError(f"--resume {resume}: {saved} not found (is it a run folder?)")
        cfg = load_config(config or saved, [*overrides, f"run_dir={resume}"])
        rebase_on_origin(cfg, resume)
        return cfg
    cfg = load_config(config, [*defaults, *overrides])
    from vidmask.train.wiring import clip_init_folder, resolve_init

    explicit = [item.split("=", 1)[0].strip() for item in overrides if item.strip().startswith("model.")]
    changes = resolve_init(cfg, explicit)
    if changes:
        whose = "that CLIP's" if clip_init_folder(cfg) is not None else "the one that run trained"
        log.warning("finetune.init=%s sets the model to %s: %s", cfg.finetune.init, whose, "; ".join(changes))
    return cfg


def rebase_on_origin(cfg: Config, run_dir: str | Path) -> None:
    """Relative paths of a run's saved config, read from another folder than the one it was
    trained from (its run.json `cwd`), are found where they were."""
    try:
        origin = json.loads((Path(run_dir) / "run.json").read_text()).get("cwd")
    except (OSError, ValueError):
        return  # a run folder from before run.json kept its folder: paths stay as written
    if origin:
        for key in rebase_paths(cfg, origin):
            log.info("%s is relative to %s, where the run was started", key, origin)
