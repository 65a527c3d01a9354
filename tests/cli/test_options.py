"""CLI choices and defaults come from config: no flag re-spells a config's vocabulary."""

from __future__ import annotations

import logging

import pytest

from armor_export import config
from armor_export.cli.main import build_parser
from armor_export.config import EngineConfig, EvalConfig, ExportConfig, VerifyConfig
from armor_export.errors import ConfigError


def options(verb: str) -> dict:
    """``--flag`` -> argparse action of one verb."""
    sub = next(a for a in build_parser()._actions if a.dest == "verb").choices[verb]
    return {s: a for a in sub._actions for s in a.option_strings}


@pytest.mark.parametrize(
    "verb, flag, choices",
    [
        ("export", "--dtype", config.EXPORT_DTYPES),
        ("export", "--lowering", config.LOWERINGS),
        ("export", "--external-data", config.EXTERNAL_DATA),
        ("build", "--dtype", config.EXPORT_DTYPES),
        ("build", "--lowering", config.LOWERINGS),
        ("verify", "--backend", config.VERIFY_BACKENDS),
        ("prune", "--continuous-step", config.CONTINUOUS_STEPS),
        ("prune", "--weighting", config.WEIGHTINGS),
        ("prune", "--batch-same-shape", config.BATCH_SAME_SHAPE),
        ("plan", "--continuous-step", config.CONTINUOUS_STEPS),
    ],
)
def test_choices_are_configs(verb, flag, choices):
    assert tuple(options(verb)[flag].choices) == choices


@pytest.mark.parametrize("verb", ["engine", "build"])
def test_backend_choices_are_the_engine_backends_and_their_old_names(verb):
    action = options(verb)["--backend"]
    names = config.ENGINE_BACKENDS + tuple(config.ENGINE_BACKEND_ALIASES)
    assert tuple(action.choices) == names
    assert action.metavar == "{tensorrt-rtx,tensorrt}"  # help shows the canonical names only


def test_export_defaults_are_export_configs():
    from armor_export.cli.export import config_from_args

    args = build_parser().parse_args(["export", "x", "-o", "y"])
    assert config_from_args(args) == ExportConfig(model="x", output_dir="y")
    args = build_parser().parse_args(["export"])
    assert config_from_args(args) == ExportConfig()


def test_engine_defaults_are_engine_configs():
    from armor_export.cli.engine import config_from_args

    assert config_from_args(build_parser().parse_args(["engine"])) == EngineConfig()
    args = build_parser().parse_args(["engine", "e", "--no-sparse"])
    assert config_from_args(args) == EngineConfig(export_dir="e", sparse_weights=False)


def test_verify_and_eval_defaults_are_their_configs():
    verify = build_parser().parse_args(["verify"])
    assert (verify.export_dir, verify.model, verify.decode_steps, verify.report_dir) == (
        VerifyConfig().export_dir,
        VerifyConfig().model,
        VerifyConfig().decode_steps,
        VerifyConfig().report_dir,
    )
    ev = build_parser().parse_args(["eval"])
    assert EvalConfig(ev.text, ev.windows, ev.seqlen, ev.batch_size) == EvalConfig()
    pr = build_parser().parse_args(["prune"])
    defaults = EvalConfig()
    assert (pr.eval_text, pr.eval_windows, pr.eval_seqlen) == (
        defaults.text,
        defaults.n_windows,
        defaults.seqlen,
    )


def test_build_flags_left_unset_keep_the_config(tmp_path):
    from armor_export.cli.build import config_from_args

    toml = tmp_path / "build.toml"
    toml.write_text('[engine]\nbackend = "tensorrt"\ncompute_capability = "sm89"\n')
    cfg, _ = config_from_args(build_parser().parse_args(["build", "--config", str(toml)]))
    assert (cfg.engine.backend, cfg.engine.compute_capability) == ("tensorrt", "sm89")


@pytest.mark.parametrize("old, new", [("rtx", "tensorrt-rtx"), ("trt", "tensorrt")])
def test_old_backend_names_are_aliases(old, new, tmp_path, caplog):
    from armor_export.cli import build, engine

    with caplog.at_level(logging.WARNING):
        args = build_parser().parse_args(["engine", "--backend", old])
        assert engine.config_from_args(args).backend == new
    assert f"engine backend '{old}' is now called '{new}'" in caplog.text

    toml = tmp_path / "build.toml"  # an existing config file keeps working
    toml.write_text(f'[engine]\nbackend = "{old}"\n')
    assert config.BuildConfig.from_toml(toml).engine.backend == new
    args = build_parser().parse_args(["build", "--backend", old])
    assert build.config_from_args(args)[0].engine.backend == new


def test_an_unknown_backend_names_the_canonical_ones():
    with pytest.raises(ConfigError, match="backend must be one of tensorrt-rtx, tensorrt"):
        EngineConfig(backend="tensorrtx").validate()


def test_generate_choices_and_defaults_are_the_runtime_configs():
    from armor_export.cli.generate import config_from_args
    from armor_export.config import RUNTIME_BACKENDS, GenerationConfig
    from armor_export.runtime import session

    assert tuple(options("generate")["--backend"].choices) == RUNTIME_BACKENDS
    assert tuple(session._OPENERS) == RUNTIME_BACKENDS  # every name opens a session
    args = build_parser().parse_args(["generate", "--prompt", "x"])
    assert config_from_args(args) == GenerationConfig()
    assert args.export_dir == ExportConfig().output_dir


@pytest.mark.parametrize(
    "toml, message",
    [
        ("[prune.calibration]\nn_samples = 0\n", "prune.calibration.n_samples must be in 1.."),
        ("[prune]\nmethod = 'obs'\n", "prune.method must be one of"),
        ("[engine]\noptimization_level = 9\n", "engine.optimization_level must be in 0..5"),
        ("[export.limits]\nmax_batch = 0\n", "export.limits.max_batch must be in 1.."),
        ("[verify]\ndecode_steps = -1\n", "verify.decode_steps"),
        ("prune = 3\n", "prune must be a table/dict"),
        ("[prune]\nnsamples = 3\n", "unknown config key(s) prune.nsamples"),
    ],
)
@pytest.mark.fault(
    "config",
    "a bad value or unknown key in a build TOML",
    "one line naming the full key path (prune.calibration.n_samples)",
)
def test_build_config_errors_name_the_full_key_path(toml, message, tmp_path):
    """A config error names the key as the TOML file spells it, never a bare 'prune.'."""
    from armor_export.cli.build import config_from_args

    path = tmp_path / "build.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as info:
        config_from_args(build_parser().parse_args(["build", "--config", str(path)]))
    assert message in str(info.value)


@pytest.mark.parametrize("verb", ["engine", "verify", "build"])
def test_every_engine_verb_takes_the_plugin_library(verb):
    assert "--plugin-library" in options(verb)


def test_build_hands_the_plugin_library_and_engine_folder_to_verify(tmp_path):
    from armor_export.cli.build import config_from_args
    from armor_export.pipeline import stage_configs

    parser = build_parser()
    args = parser.parse_args(["build", "-o", str(tmp_path), "--plugin-library", "/opt/libarmor.so"])
    cfg, _ = config_from_args(args)
    stages = stage_configs(cfg)
    assert stages["engine"].plugin_library == "/opt/libarmor.so"
    assert stages["verify"].plugin_library == "/opt/libarmor.so"
    assert stages["verify"].engine_dir == str(tmp_path / "engine")
    verify_args = parser.parse_args(["verify", "x", "--engine", "e", "--plugin-library", "p.so"])
    assert (verify_args.engine_dir, verify_args.plugin_library) == ("e", "p.so")


# every count a user can type, far out of range; the model or folder named does not exist, so
# a check that came after the work started would fail differently
OUT_OF_RANGE = [
    ("generate", ["nowhere", "--prompt", "hi", "--threads", "100000"], "threads", "--threads"),
    ("generate", ["nowhere", "--prompt", "hi", "--max-new-tokens", "100000000"],
     "max_new_tokens", "--max-new-tokens"),
    ("generate", ["nowhere", "--prompt", "hi", "--seed", "-1"], "seed", "--seed"),
    ("prune", ["--model", "nowhere", "--workers", "100000"], "workers", "--workers"),
    ("prune", ["--model", "nowhere", "--calib-seqlen", "100000000"], "calibration.seqlen",
     "--calib-seqlen"),
    ("prune", ["--model", "nowhere", "--calib-samples", "100000000"], "calibration.n_samples",
     "--calib-samples"),
    ("prune", ["--model", "nowhere", "--iterations", "100000000"], "armor.iterations",
     "--iterations"),
    ("prune", ["--model", "nowhere", "--seed", "-1"], "calibration.seed", "--seed"),
    ("plan", ["--model", "nowhere", "--ranks", "100000"], "ranks", "--ranks"),
    ("plan", ["--model", "nowhere", "--workers", "100000"], "workers", "--workers"),
    ("eval", ["nowhere", "--windows", "100000000"], "eval.n_windows", "--windows"),
    ("eval", ["nowhere", "--seqlen", "100000000"], "eval.seqlen", "--seqlen"),
    ("eval", ["nowhere", "--batch-size", "100000"], "eval.batch_size", "--batch-size"),
    ("eval", ["nowhere", "--threads", "100000"], "threads", "--threads"),
    ("export", ["nowhere", "--max-batch", "100000"], "limits.max_batch", "--max-batch"),
    ("export", ["nowhere", "--max-context", "100000000"], "limits.max_context",
     "--max-context"),
    ("engine", ["nowhere", "--max-prompt", "100000000"], "max_prompt", "--max-prompt"),
    ("verify", ["nowhere", "--decode-steps", "100000"], "decode_steps", "--decode-steps"),
    ("build", ["--model", "nowhere", "--calib-samples", "100000000"],
     "prune.calibration.n_samples", "--calib-samples"),
]  # fmt: skip


@pytest.mark.parametrize("verb, argv, key, flag", OUT_OF_RANGE)
@pytest.mark.fault(
    "config",
    "a count out of range on any verb (generate --threads 100000, --workers 100000, "
    "--calib-seqlen 1e8, --seed -1, --ranks 100000, --decode-steps 100000...)",
    "one line naming the key, the allowed range, the value and the flag, before any model "
    "or export is opened; threads and workers at most 4 per CPU",
)
def test_every_count_is_bounded_before_work_starts(verb, argv, key, flag, capsys):
    from armor_export.cli.main import main

    assert main([verb, *argv]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    value = argv[argv.index(flag) + 1]
    line = next(line for line in err.splitlines() if line.startswith(f"armor-export {verb}"))
    assert f"{key} must be in " in line and f", got {value} ({flag}" in line, line
    if flag in ("--threads", "--workers"):
        assert f"..{4 * config.os.cpu_count()} (4 per CPU" in line, line


def test_counts_in_range_and_defaults_pass():
    """The bounds leave every default, and the largest values the tests and recipes use."""
    for cfg in (config.PruneConfig(workers=config.max_parallel()), config.EvalConfig(),
                config.ExportConfig(), config.EngineConfig(), config.VerifyConfig(),
                config.GenerationConfig()):  # fmt: skip
        cfg.validate()
    config.check_count("threads", 0, 0, config.max_parallel)
