"""``armor-export plan``: jobs, memory and time estimates from a short probe, nothing pruned."""

from __future__ import annotations

import json

import pytest

from armor_export.cli.main import main
from armor_export.prune import plan as plan_
from armor_export.prune.plan import make_plan
from tests.conftest import tiny_prune_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cfg(model_dir, text_file, out, method="armor", **extra):
    return tiny_prune_config(model_dir, text_file, out, method, armor={"iterations": 50}, **extra)


def test_plan_lists_every_job_and_measures_each_shape(tiny_model_dir, text_file, tmp_path):
    out = tmp_path / "never-written"
    cfg = _cfg(tiny_model_dir, text_file, out, low_memory=True, workers=2)
    plan = make_plan(cfg, ranks=2)
    assert not out.exists()  # planning prunes nothing and writes nothing
    assert plan.jobs == 14 and plan.layers == 2
    names = sorted(n for sp in plan.shapes for n in sp.names)
    assert len(names) == len(set(names)) == 14
    assert sorted(plan.job_ranks) == names
    for sp in plan.shapes:
        suffixes = tuple(sp.pattern.split(", "))
        assert all(n.endswith(suffixes) for n in sp.names)
        assert sp.probe_iterations == 3 and sp.seconds_per_iteration > 0
        assert sp.est_seconds_per_job == pytest.approx(
            sp.setup_seconds + 50 * sp.seconds_per_iteration,
            abs=5e-3,  # fields are rounded
        )
    assert all(1 <= sp.batch <= len(sp.names) for sp in plan.shapes)  # auto: as probed
    assert sum(r["jobs"] for r in plan.per_rank) == 14 and len(plan.per_rank) == 2
    assert {plan.job_ranks[n] for n in names} == {0, 1}
    est = {n: sp.est_seconds_per_job for sp in plan.shapes for n in sp.names}
    for r in plan.per_rank:
        mine = [n for n, rank in plan.job_ranks.items() if rank == r["rank"]]
        assert r["est_seconds"] == pytest.approx(sum(est[n] for n in mine), abs=0.1)
    assert plan.calibration["batches"] == 2 and plan.calibration["est_seconds"] > 0
    # the solves were probed the way the prune runs them: in two worker processes at once,
    # each started like a pool worker (its start and first solve's extra cost measured)
    assert plan.probe["processes"] == 2 and plan.probe["worker_start_seconds"] > 0
    fixed = plan.fixed_seconds
    assert sorted(fixed) == ["checkpoint_write", "job_keys", "load", "worker_start"]
    assert all(v >= 0 for v in fixed.values()) and fixed["job_keys"] > 0
    assert fixed["worker_start"] >= plan.probe["worker_start_seconds"] - 0.1
    assert all(sp.packed_bytes > 0 for sp in plan.shapes)  # what each job stores, measured
    around = fixed["load"] + fixed["job_keys"] + fixed["worker_start"] + fixed["checkpoint_write"]
    busiest = max(r["est_seconds"] for r in plan.per_rank)
    assert plan.est_total_seconds == pytest.approx(
        around + plan.calibration["est_seconds"] + busiest, abs=0.5
    )
    mem = plan.memory_mib
    assert mem["model_resident"] < mem["whole_model_fp32"]  # low memory: one layer + base
    # per process: the main process calibrates, each pool worker runs one job at a time
    # low memory: the embeddings are released before the first layer runs; the main
    # process's peak is one layer and its activations here (a tiny vocabulary)
    assert mem["model_resident"] == pytest.approx(
        mem["outside_layers"] + mem["one_decoder_layer"], abs=0.2
    )
    capture_phase = mem["outside_layers"] + mem["calibration_capture"]
    layer_phase = mem["one_decoder_layer"] + mem["calibration_activations"]
    assert mem["main_process"] == pytest.approx(
        mem["runtime_measured"] + mem["statistics"]
        + max(capture_phase, layer_phase, mem["checkpoint_write"]),
        abs=0.4,
    )  # fmt: skip
    assert mem["worker_process"] == pytest.approx(
        mem["runtime_worker"] + mem["largest_job"], abs=0.2
    )
    assert mem["peak_process"] == max(mem["main_process"], mem["worker_process"])
    assert mem["total_per_worker"] == mem["peak_process"]
    # runtimes come from a fresh process, not the plan's own (inflated by its probe)
    assert 50 < mem["runtime_worker"] < 2000 and 50 < mem["runtime_measured"] < 2000


def test_plan_shows_same_shape_batches(tiny_model_dir, text_file, tmp_path):
    cfg = _cfg(tiny_model_dir, text_file, tmp_path / "o", batch_same_shape="on")
    plan = make_plan(cfg, probe_iterations=1)
    budget = max(sp.shape[0] * sp.shape[1] for sp in plan.shapes)  # the largest matrix
    want = [min(len(sp.names), budget // (sp.shape[0] * sp.shape[1])) for sp in plan.shapes]
    assert [sp.batch for sp in plan.shapes] == want and max(want) > 1
    assert any("same-shape batched solves on cpu" in note for note in plan.notes)


def test_in_memory_plan_counts_the_whole_model(tiny_model_dir, text_file, tmp_path):
    plan = make_plan(_cfg(tiny_model_dir, text_file, tmp_path / "o", method="wanda"))
    mem = plan.memory_mib
    assert mem["model_resident"] == mem["whole_model_fp32"]
    # one worker: the jobs run in the main process, which still holds the model
    assert mem["worker_process"] == 0 == mem["runtime_worker"]
    calibrating = mem["model_resident"] + mem["calibration_activations"]
    solving = mem["whole_model_fp32"] + mem["largest_job"]
    # the load comes first: the fp32 model (this one is stored in fp32) and what loading adds
    assert mem["model_load"] == pytest.approx(
        mem["whole_model_fp32"] + plan_.LOAD_EXTRA_MIB, abs=0.2
    )
    assert mem["main_process"] == pytest.approx(
        mem["runtime_measured"]
        + max(mem["model_load"], mem["statistics"] + max(calibrating, solving)),
        abs=0.3,
    )
    assert mem["total_per_worker"] == mem["peak_process"] == mem["main_process"]
    assert all(sp.probe_iterations == 0 for sp in plan.shapes)  # a whole baseline job timed
    assert len(plan.per_rank) == 1 and plan.per_rank[0]["jobs"] == 14
    # one worker: the prune solves in its main process, and so does the probe
    assert plan.probe["processes"] == 1 and plan.probe["worker_start_seconds"] == 0


# the peak RSS of a fresh process loading a model (VmHWM: ru_maxrss would also count the
# parent's size, which a forked child starts with)
LOAD_PEAK = (
    "import sys\n"
    "import transformers, armor_export.prune.api, armor_export.data.models as models\n"
    "models.load_model_and_tokenizer(sys.argv[1])\n"
    "status = open('/proc/self/status').read().split('VmHWM:')[1].split()\n"
    "print(int(status[0]) / 1024)\n"
)


@pytest.mark.fault(
    "plan",
    "an in-memory prune of a bf16 checkpoint, loaded as fp32",
    "the planned main-process peak covers the load's measured peak (the fp32 model beside "
    "the mapped bf16 file), not the fp32 model alone",
)
def test_in_memory_plan_covers_loading_a_bf16_checkpoint(tokenizer, text_file, tmp_path):
    import subprocess
    import sys

    import torch

    from tests.conftest import tiny_config, tiny_model

    config = tiny_config("llama")
    config.vocab_size, config.tie_word_embeddings = 32000, False  # 2 x 62.5 MiB in fp32
    folder = tmp_path / "bf16"
    tiny_model(config=config).to(torch.bfloat16).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    mem = make_plan(_cfg(folder, text_file, tmp_path / "o", method="magnitude")).memory_mib
    run = subprocess.run([sys.executable, "-c", LOAD_PEAK, str(folder)], capture_output=True,
                         text=True, timeout=300, check=True)  # fmt: skip
    measured = float(run.stdout.split()[-1])  # MiB, the child's peak RSS
    assert mem["main_process"] >= measured
    assert mem["runtime_measured"] + mem["model_load"] >= measured  # the load alone covers it
    assert mem["model_load"] >= 1.5 * mem["whole_model_fp32"]  # the model and its bf16 file


def test_cli_plan_prints_and_writes_json(tiny_model_dir, text_file, tmp_path, capsys):
    config = tmp_path / "r.toml"
    config.write_text(
        f'model = "{tiny_model_dir}"\nworkers = 1\n[armor]\nblock_size = 16\ncompile = false\n'
        f'[calibration]\ntext = "{text_file}"\nn_samples = 4\nseqlen = 32\nbatch_size = 2\n'
    )
    code = main(["plan", "--config", str(config), "--ranks", "2", "--list-jobs",
                 "--json", str(tmp_path / "plan.json")])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    out = " ".join(out.split())  # rich wraps long lines
    assert "14 jobs in 2 decoder layers" in out and "estimated wall time" in out
    assert "model.layers.1.mlp.down_proj" in out  # --list-jobs
    data = json.loads((tmp_path / "plan.json").read_text())
    assert data["jobs"] == 14 and data["ranks"] == 2 and data["shapes"][0]["pattern"]

    code = main(["plan", "--config", str(config), "--ranks", "0"])
    _, err = capsys.readouterr()
    assert code == 1 and "ranks must be in 1..1024, got 0 (--ranks)" in err


def test_plan_says_when_the_workers_do_not_fit_this_machine(
    tiny_model_dir, text_file, tmp_path, monkeypatch
):
    """A machine too small for the run: the probe runs fewer processes at once than the
    workers (each would hold a job), and the plan says how many workers fit."""
    from armor_export import memory

    small = 400 * 1024 * 1024  # below two workers' runtimes and jobs
    monkeypatch.setattr(memory, "meminfo_bytes", lambda key="MemAvailable": small)
    cfg = _cfg(tiny_model_dir, text_file, tmp_path / "o", low_memory=True, workers=2)
    plan = make_plan(cfg, ranks=2, probe_iterations=2)
    assert plan.probe["processes"] == 1
    notes = " ".join(plan.notes)
    assert "only 1 probe process(es) fit in the memory available now, not 2" in notes
    assert "2 worker(s) on this machine need about" in notes and "run at most 1 here" in notes
