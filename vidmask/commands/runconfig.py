"""The config of a training command: a YAML file and overrides, or a run folder to resume."""

from __future__ import annotations

from pathlib import Path

from vidmask.config import Config, ConfigError, load_config


def config_from_args(config: str | None, overrides: list[str], resume: str | None,
                     defaults: tuple[str, ...] = ()) -> Config:
    """`defaults` come before the user's overrides; a resumed run starts from its saved config.yaml."""
    if resume:
        saved = Path(resume) / "config.yaml"
        if not saved.is_file():
            raise ConfigError(f"--resume {resume}: {saved} not found (is it a run folder?)")
        return load_config(config or saved, [*overrides, f"run_dir={resume}"])
    return load_config(config, [*defaults, *overrides])
