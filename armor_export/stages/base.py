"""What a ``build`` stage declares, and the registry that orders the stages.

Torch-free: ``config.py`` reads the registry to validate ``stages``, and ``--help`` lists
it. A stage imports its heavy modules inside ``run`` (and ``provided`` / ``key_parts``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from armor_export.errors import ConfigError

if TYPE_CHECKING:
    from armor_export.config import BuildConfig
    from armor_export.progress import Reporter


class StageConfig(Protocol):
    """A stage's own config: its ``to_dict()`` is hashed and recorded in the manifest."""

    def to_dict(self) -> dict[str, Any]: ...


class Provided(NamedTuple):
    """A stage the build does not run because its result is given (a pruned checkpoint)."""

    detail: str  # shown in the summary
    outputs: list[Path]  # hashed as the next stage's input


class Stage(ABC):
    """One step of ``armor-export build``.

    A stage reads its settings from one ``BuildConfig`` field (``section``), works inside
    one folder of the build folder (``folder``) and proves it finished with ``outputs``,
    whose hashes are the next stage's input. ``pipeline.build`` does the rest: skip when
    the manifest record still matches, run, record.
    """

    name: str  # as in --stages / --force and the manifest
    section: str  # the BuildConfig field holding this stage's settings
    folder: str  # this stage's folder inside the build folder

    def settings(self, build: BuildConfig) -> StageConfig:
        """This stage's table of the build config (before its paths are set)."""
        return getattr(build, self.section)

    def folder_in(self, build: BuildConfig) -> Path:
        return Path(build.output_dir) / self.folder

    @abstractmethod
    def configure(self, build: BuildConfig) -> StageConfig:
        """This stage's own config, with its paths inside ``build.output_dir``."""

    @abstractmethod
    def outputs(self, cfg: StageConfig) -> list[Path]:
        """The files that prove this stage finished (hashed to chain the stages)."""

    @abstractmethod
    def run(self, cfg: StageConfig, reporter: Reporter) -> tuple[str, bool]:
        """Do the work; returns (one-line summary, passed)."""

    def key_parts(self, cfg: StageConfig) -> dict[str, Any]:
        """Extra values that, when changed, redo this stage (beside config and input)."""
        return {}

    def provided(self, build: BuildConfig) -> Provided | None:
        """The result given instead of running this stage, or None (then it may run)."""
        return None


_STAGES: list[Stage] = []  # in run order


def register(stage: Stage, *, after: str | None = None) -> Stage:
    """Add ``stage`` to the build, last or right after the stage named ``after``."""
    if not (stage.name and stage.section and stage.folder):
        raise ValueError(f"{type(stage).__name__} must set name, section and folder")
    if stage.name in stage_names():
        raise ValueError(f"a stage named {stage.name!r} is already registered")
    index = len(_STAGES) if after is None else _STAGES.index(get(after)) + 1
    _STAGES.insert(index, stage)
    return stage


def unregister(name: str) -> Stage:
    """Remove a registered stage (tests, plugins that replace a stage)."""
    stage = get(name)
    _STAGES.remove(stage)
    return stage


def registered() -> tuple[Stage, ...]:
    """The registered stages in run order."""
    return tuple(_STAGES)


def stage_names() -> tuple[str, ...]:
    return tuple(stage.name for stage in _STAGES)


def get(name: str) -> Stage:
    for stage in _STAGES:
        if stage.name == name:
            return stage
    raise ConfigError(f"unknown stage {name!r}; registered stages: {', '.join(stage_names())}")


def check_names(names, what: str) -> None:
    """A ConfigError naming the registered stages when ``names`` holds another."""
    unknown = sorted(set(names) - set(stage_names()))
    if unknown:
        raise ConfigError(
            f"{what}: unknown stage(s) {', '.join(unknown)}; "
            f"registered stages: {', '.join(stage_names())}"
        )


def stage_dir(build: BuildConfig, name: str) -> Path:
    """Where the stage ``name`` works inside the build folder (later stages read it)."""
    return get(name).folder_in(build)
