"""`bigssl pseudo-label` end to end (teacher + fusion LM checkpoints): `kill -9` mid-run, then
a 2-process re-run finishes the job with every utterance labeled exactly once, and with the
labels of one uninterrupted single-process run."""

import collections
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import seqio
import tensorflow as tf
from test_pseudo_label import ENCODER, make_teacher

from bigssl_tasks import pseudo_labeled, toy_corpus, vocab

CORPUS = "plkill"
FIELDS = ("input_dim", "model_dim", "num_layers", "num_heads", "conv_kernel_size",
          "subsampling_channels")  # fmt: skip


def _read_ids(files) -> list[str]:
    return list(_read_labels(files))


def _read_labels(files) -> dict[str, str]:
    """{utterance id: pseudo-label text} of the records in `files`."""
    labels = {}
    for record in tf.data.TFRecordDataset(files).as_numpy_iterator():
        feature = tf.train.Example.FromString(record).features.feature
        utterance = feature["id"].bytes_list.value[0].decode()
        labels[utterance] = feature["text"].bytes_list.value[0].decode()
    return labels


def write_teacher_run(run_dir, vocabulary: str) -> None:
    """A `bigssl train`-style run directory holding the tiny teacher at step 1."""
    from bigssl_jax import checkpointing

    teacher = make_teacher(vocabulary)
    run_dir.mkdir()
    (run_dir / "config.gin").write_text(
        "ExperimentConfig.model = @CtcTrainModel()\n"
        "CtcTrainModel.encoder = @EncoderConfig()\n"
        "CtcTrainModel.vocab_size = 40\n"
        "CtcTrainModel.spec_augment = None\n"
        "CtcTrainModel.decoding = @DecodingConfig()\n"
        "DecodingConfig.beam_size = 2\n"
        "DecodingConfig.max_output_length = 16\n"
        + "".join(f"EncoderConfig.{k} = {v}\n" for k, v in vars(ENCODER).items() if k in FIELDS)
    )
    (run_dir / "vocabulary.model").write_bytes(pathlib.Path(vocabulary).read_bytes())
    checkpointer = checkpointing.Checkpointer(run_dir, async_save=False)
    checkpointer.save(1, {"params": teacher.variables["params"]}, {"step": 1})
    checkpointer.close()


def write_lm_run(run_dir, vocab_size: int = 40) -> None:
    """A `bigssl train-lm`-style run directory holding a tiny Transformer LM at step 1."""
    import jax
    from flax import linen as nn

    from bigssl_jax import checkpointing, inference
    from bigssl_jax.models import transformer_lm

    config = transformer_lm.TransformerLmConfig(
        vocab_size=vocab_size, model_dim=16, num_layers=1, num_heads=2, mlp_dim=32, max_length=32
    )
    model = transformer_lm.LmTrainModel(config=config)
    variables = model.init_variables(jax.random.key(1), inference.example_batch())
    run_dir.mkdir()
    (run_dir / "config.gin").write_text(
        "ExperimentConfig.model = @LmTrainModel()\n"
        "LmTrainModel.config = @TransformerLmConfig()\n"
        + "".join(
            f"TransformerLmConfig.{k} = {getattr(config, k)}\n"
            for k in ("vocab_size", "model_dim", "num_layers", "num_heads", "mlp_dim", "max_length")
        )
    )
    checkpointer = checkpointing.Checkpointer(run_dir, async_save=False)
    checkpointer.save(1, {"params": nn.unbox(variables)["params"]}, {"step": 1})
    checkpointer.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def _command(data_dir, run_dir, output_dir, *flags) -> list[str]:
    return [
        os.path.join(os.path.dirname(sys.executable), "bigssl"), "pseudo-label",
        f"--data_dir={data_dir}", f"--checkpoint={run_dir}", f"--corpus={CORPUS}",
        f"--output_dir={output_dir}", "--batch_size=2", "--bucket_seconds=1", *flags,
    ]  # fmt: skip


def test_kill_9_mid_run_then_rerun_labels_every_utterance_exactly_once(tmp_path):
    data_dir = tmp_path / "data"
    ids = toy_corpus.write_toy_corpus(
        data_dir, CORPUS, splits={"unlabeled": (24, False)}, num_shards=8, max_seconds=1.0
    )["unlabeled"]
    vocabulary = str(tmp_path / "spm.model")
    vocab.train_vocabulary([" ".join(toy_corpus.WORDS)] * 4, vocabulary, vocab_size=40)
    write_teacher_run(tmp_path / "teacher", vocabulary)
    write_lm_run(tmp_path / "lm")
    output_dir = tmp_path / "pl"
    command = _command(
        data_dir, tmp_path / "teacher", output_dir, "--keep_top_fraction=0.5",
        f"--lm_checkpoint={tmp_path / 'lm'}", "--lm_weight=0.3",
    )  # fmt: skip
    # One device per process (test_pseudo_label tests the multi-device decode); processes
    # share compiled programs through a compilation cache.
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=1 --xla_backend_optimization_level=0",
        "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax_cache"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }
    env.pop("BIGSSL_DISTRIBUTED", None)
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    markers = output_dir / "shards"
    deadline = time.monotonic() + 120
    while not list(markers.glob("*.done.json")) and process.poll() is None:
        assert time.monotonic() < deadline, "no unit finished in 120 s"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()[-2000:]
    done_before = len(list(markers.glob("*.done.json")))
    assert 1 <= done_before < 8 and not (output_dir / "manifest.json").exists()

    # The re-run is a 2-process job (jax.distributed on localhost): each process labels
    # the unfinished units among its own, process 0 then filters and writes the manifest.
    coordinator = f"localhost:{_free_port()}"
    jobs = [
        subprocess.Popen(
            [
                *command,
                "--distributed",
                "--num_processes=2",
                f"--process_id={index}",
                f"--coordinator_address={coordinator}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for index in range(2)
    ]
    outputs = [job.communicate(timeout=300) for job in jobs]
    for job, (_, stderr) in zip(jobs, outputs, strict=True):
        assert job.returncode == 0, stderr[-2000:]
    assert "process 1: 4 files" in outputs[1][0] and "process 0: 4 files" in outputs[0][0]
    assert len(list(markers.glob("*.done.json"))) == 8 and not list(markers.glob("*.tmp-*"))
    labeled = _read_ids(sorted(str(p) for p in markers.glob("*.tfrecord")))
    assert collections.Counter(labeled) == collections.Counter(ids)  # each exactly once
    manifest = json.loads((output_dir / "manifest.json").read_text())
    assert manifest["decoding"]["lm_weight"] == 0.3 and manifest["lm"].endswith("lm/checkpoints/1")
    report = json.loads((output_dir / "report.json").read_text())
    assert (report["num_labeled"], report["num_kept"], report["num_input_examples"]) == (24, 12, 24)
    assert report["oracle"]["num_utterances"] == 24
    name = pseudo_labeled.register_from_manifest(output_dir / "manifest.json")
    assert name == f"{CORPUS}_unlabeled_pseudo"
    dataset = seqio.get_mixture_or_task(name).get_dataset(
        None, split="all", shuffle=False, try_in_mem_cache=False
    )
    assert len(list(dataset.as_numpy_iterator())) == 12

    # The killed + 2-process job labels exactly as one uninterrupted single-process run.
    single = subprocess.run(
        _command(
            data_dir,
            tmp_path / "teacher",
            tmp_path / "pl_single",
            "--keep_top_fraction=0.5",
            f"--lm_checkpoint={tmp_path / 'lm'}",
            "--lm_weight=0.3",
        ),  # fmt: skip
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert single.returncode == 0, single.stderr[-2000:]
    single_labels = _read_labels(
        sorted(str(p) for p in (tmp_path / "pl_single").glob("shards/*.tfrecord"))
    )
    assert single_labels == _read_labels(sorted(str(p) for p in markers.glob("*.tfrecord")))
