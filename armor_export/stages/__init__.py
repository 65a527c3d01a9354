"""The stages of ``armor-export build``: one module each, registered below in run order.

``pipeline.build`` runs whatever is registered; ``BuildConfig.stages``, ``--stages``,
``--force``, their help and the summary all read this registry, so no other file spells
the stage list.

Adding a stage (say ``quantize``, between ``export`` and ``engine``):

1. Its settings: a config dataclass with ``validate()`` and ``to_dict()`` in
   ``config.py`` and a ``BuildConfig`` field for it (the TOML table ``[quantize]``);
   validate it in ``BuildConfig.validate``. A stage without settings of its own may name
   an existing section.
2. ``armor_export/stages/quantize.py``: a :class:`Stage` subclass with ``name``,
   ``section`` (the ``BuildConfig`` field), ``folder`` (inside the build folder) and

   - ``configure(build)``: the section with its paths set inside the build folder (read
     earlier stages' folders with ``stage_dir(build, "export")``);
   - ``outputs(cfg)``: the files that prove it finished (their hash is the next stage's
     input, so a changed output redoes what follows);
   - ``run(cfg, reporter)``: the work, importing heavy modules here; returns a one-line
     summary and whether it passed (a failed stage stops the build);
   - optionally ``key_parts(cfg)`` (values that redo the stage when they change, like the
     export's graph revision) and ``provided(build)`` (a result given instead of run).
3. One line below: ``register(quantize.QuantizeStage())`` where it runs. Code outside
   the package (a plugin, a test) calls ``register(stage, after="export")`` instead.
"""

from armor_export.stages import engine, export, prune, quantize, verify
from armor_export.stages.base import (
    Provided,
    Stage,
    StageConfig,
    check_names,
    get,
    register,
    registered,
    stage_dir,
    stage_names,
    unregister,
)

# the built-in stages, in run order
register(prune.PruneStage())
register(quantize.QuantizeStage())
register(export.ExportStage())
register(engine.EngineStage())
register(verify.VerifyStage())

__all__ = [
    "Provided",
    "Stage",
    "StageConfig",
    "check_names",
    "get",
    "register",
    "registered",
    "stage_dir",
    "stage_names",
    "unregister",
]
