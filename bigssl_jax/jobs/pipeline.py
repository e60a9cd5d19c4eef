"""The main job: every stage of the BigSSL recipe on the embedded corpus, resumable.

    bigssl pipeline --preset=demo

Stages run in order; each one finds its own finished output and skips (a re-run after an
interruption picks up where it stopped, and an interrupted training stage resumes from its
latest checkpoint):

1. corpus:    synthesise the embedded corpus (`bigssl make-corpus`).
2. prepare:   TFRecord shards + registry entry for every split (`bigssl prepare --embedded`).
3. vocab:     sentencepiece model on the labeled transcripts (`bigssl vocab`).
4. batches:   one batch of the labeled and of the unlabeled seqio task (`bigssl show-batches`).
5. pretrain:  self-supervised pre-training on the unlabeled split (BEST-RQ).
6. baseline:  supervised only: fine-tuning from scratch on the labeled split.
7. teacher:   fine-tuning the pre-trained encoder on the labeled split.
8. generations g = 1..N of noisy student training:
     pseudo-label_g: the previous model (the teacher, then student g - 1) transcribes the
                     unlabeled split (`bigssl pseudo-label`);
     student_g:      the pre-trained encoder fine-tuned on labeled + pseudo-labeled batches
                     mixed 1:9 in every batch, with SpecAugment as its noise.
9. evaluate:  WER and CER of every model on dev, test and test_clean (`bigssl evaluate`); one
              table (`results.md`, `results.json`) and a plot of WER (`results.png`).

Stages 5-9 run `bigssl` subprocesses (one clean process and gin config each) with the
preset's experiment gins, writing under `<data_dir>/pipeline/<preset>/<stage>/` with a
`<stage>.log`; a stage is done when its `DONE` marker exists. The subprocesses share JAX's
compilation cache `<data_dir>/xla_cache` (unless `JAX_COMPILATION_CACHE_DIR` is set).
"""

import concurrent.futures
import dataclasses
import json
import os
import pathlib
import sys
import time

from bigssl_jax import checkpointing, paths
from bigssl_jax.data import prepare, sources, synthetic_corpus
from bigssl_jax.jobs import claims, provenance, stage_processes
from bigssl_jax.jobs.corpora import (
    EVAL_SPLITS,
    LabeledShare,
    ensure_vocabulary,
    make_labeled_share,
    print_stage,
    text_only_file,
)
from bigssl_jax.jobs.error_tables import (
    ERROR_RATES,
    dev_curves,
    plot_dev_curves,
    results_table,
    write_results,
)

DONE = "DONE"
XLA_CACHE = "xla_cache"  # <data_dir>/xla_cache: the stages' shared compilation cache
PRETRAIN = "pretrain"  # the pre-training stage's name (the data-efficiency experiment reuses it)
# Two training stages side by side, one XLA thread each, do more work per second on 2 CPU
# cores than one stage with both threads (docs/claim.md: 2 x 1.0 against 1.4 steps/s).
ONE_THREAD_XLA_FLAGS = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
RECORD_FILE = "run.json"  # command, preset, corpus, wall seconds and every model's scores


@dataclasses.dataclass(frozen=True, kw_only=True)
class PipelinePreset:
    """What one pipeline preset runs.

    Attributes:
      corpus_preset: the `bigssl make-corpus` preset of the embedded corpus.
      vocab_size: sentencepiece pieces asked for (a soft limit on small corpora).
      batch_size: batch size of the batches shown.
      pretrain_gin: experiment gin of the pre-training stage.
      finetune_gin: experiment gin of the baseline, the teacher and the students (CTC or
        RNN-T fine-tuning; its VOCAB_SIZE macro is set to `vocab_size`).
      pretrain_bindings, finetune_bindings, student_bindings: extra gin bindings.
      generations: noisy student generations.
      mix_ratios: in-batch shares of labeled and pseudo-labeled rows for the students.
      pseudo_label_flags: extra `bigssl pseudo-label` flags (filtering, batch size).
      labeled_fraction: below 1, the data-efficiency design (`claim_stages`): every arm
        trains on that share of the labeled pool (`<corpus>_f<pct>`, the rest unlabeled), and
        a supervised run on the whole pool is the topline; 1: the classic stages.
      ngram_order: n of the token n-gram LM counted on the corpus's text-only sentences (its
        labeled transcripts without them); None: no LM.
      lm_weights: fusion weights tried on dev for each model; the best labels and scores.
      beam_size: beam of every LM-fused decoding.
      side_by_side: in the data-efficiency design, run independent training stages two at a
        time with one XLA thread each (pre-training with supervised_100, then the share's
        supervised arm with its teacher).
    """

    corpus_preset: str
    vocab_size: int
    batch_size: int = 8
    pretrain_gin: str = "experiments/pretrain_best_rq_small.gin"
    finetune_gin: str = "experiments/finetune_ctc_small.gin"
    pretrain_bindings: tuple[str, ...] = ()
    finetune_bindings: tuple[str, ...] = ()
    student_bindings: tuple[str, ...] = ()
    generations: int = 1
    mix_ratios: tuple[float, float] = (1.0, 9.0)
    pseudo_label_flags: tuple[str, ...] = ()
    labeled_fraction: float = 1.0
    ngram_order: int | None = None
    lm_weights: tuple[float, ...] = ()
    beam_size: int = 4
    side_by_side: bool = False


PRESETS = {
    # The data-efficiency design on the tiny corpus with a few steps per stage (the
    # end-to-end test): half of the 12 labeled utterances, a trigram LM, one fusion weight.
    "smoke": PipelinePreset(
        corpus_preset="tiny",
        vocab_size=64,
        batch_size=4,
        pretrain_gin="experiments/pretrain_w2v_bert_smoke.gin",
        finetune_gin="experiments/finetune_ctc_smoke.gin",
        pretrain_bindings=("TrainerConfig.num_steps = 2",),
        finetune_bindings=("TrainerConfig.num_steps = 2",),
        mix_ratios=(1.0, 3.0),
        pseudo_label_flags=("--batch_size=8",),
        labeled_fraction=0.5,
        ngram_order=3,
        lm_weights=(0.5,),
        beam_size=2,
        side_by_side=True,
    ),
    # The claim at laptop scale (docs/claim.md): the `closed` corpus (1,000 words), 10% of
    # its 2,000-utterance labeled pool; character units (32 pieces: with 64, whole-word
    # pieces of the text-only sentences kept every arm on the CTC blank plateau for 1,000+
    # steps); w2v-BERT pre-training on the unlabeled audio (1,500 steps); supervised_10,
    # ssl_10 (the teacher), nst_10 (one noisy student on pseudo-labels fused with a 6-gram LM
    # of the text-only sentences) and supervised_100; every fine-tuning the same 1,000 steps
    # and schedule, scored at its step with the best dev CER; greedy and LM-fused scores.
    "demo": PipelinePreset(
        corpus_preset="closed",
        vocab_size=32,
        pretrain_gin="experiments/pretrain_w2v_bert_small.gin",
        pretrain_bindings=(
            "TrainerConfig.num_steps = 1500",
            "TrainerConfig.eval_every = 500",
            "TrainerConfig.checkpoint_every = 500",
        ),
        finetune_bindings=(
            "TrainerConfig.num_steps = 1000",
            "TrainerConfig.eval_every = 250",
            "TrainerConfig.checkpoint_every = 250",
            "TrainerConfig.best_metric = 'cer'",
        ),
        mix_ratios=(1.0, 3.0),
        pseudo_label_flags=("--keep_top_fraction=0.8",),
        labeled_fraction=0.1,
        ngram_order=6,
        lm_weights=(0.3, 0.6, 1.0),
        side_by_side=True,
    ),
    # The classic stages on the open-vocabulary `small` corpus with shorter runs (BEST-RQ 800
    # steps, CTC fine-tunings of 1200 steps): the demo until 2026-12 (docs/self_training.md).
    "small_demo": PipelinePreset(
        corpus_preset="small",
        vocab_size=64,
        pretrain_bindings=("TrainerConfig.num_steps = 800",),
        finetune_bindings=(
            "TrainerConfig.num_steps = 1200",
            "TrainerConfig.eval_every = 1200",
            "TrainerConfig.checkpoint_every = 600",
        ),
        student_bindings=("train/InputConfig.batch_size = 10",),
        pseudo_label_flags=("--keep_top_fraction=0.9",),
    ),
    # The *_small experiment gins as committed (docs/finetuning.md): BEST-RQ 1500 steps, CTC
    # fine-tunings of 4000 steps; ~2.5 h on 2 CPU cores.
    "small": PipelinePreset(
        corpus_preset="small",
        vocab_size=64,
        student_bindings=("train/InputConfig.batch_size = 10",),
        pseudo_label_flags=("--keep_top_fraction=0.9",),
    ),
}


class StageError(RuntimeError):
    """A stage's subprocess failed; the message names the stage and its log."""


# What a pipeline or experiment command reports as one line (exit code 1), not a traceback.
USER_ERRORS = (
    synthetic_corpus.CorpusError,
    prepare.PrepareError,
    sources.SourceError,
    StageError,
    stage_processes.Stopped,
    OSError,
)


@dataclasses.dataclass(frozen=True)
class Runner:
    """Runs `bigssl` stage subprocesses of one preset under `work_dir`.

    Attributes:
      preset: the preset whose gins, bindings and flags every stage uses.
      corpus: the corpus pseudo-labeled (training stages read theirs from the gin).
      data_dir: the data directory.
      work_dir: stage `<name>` writes `<work_dir>/<name>/` and `<work_dir>/<name>.log`.
      bindings: gin bindings appended to every training stage's (e.g. another `CORPUS`).
      single_threaded: run each stage with one XLA CPU thread (`side_by_side` stages).
    """

    preset: PipelinePreset
    corpus: str
    data_dir: pathlib.Path
    work_dir: pathlib.Path
    bindings: tuple[str, ...] = ()
    single_threaded: bool = False

    def run(self, name: str, command: str, *args: str) -> pathlib.Path:
        """`bigssl <command> <args>` as stage `name`, unless its DONE marker exists."""
        stage_dir = self.work_dir / name
        start = time.perf_counter()
        if (stage_dir / DONE).exists():
            print_stage(name, f"found {stage_dir}", start)
            return stage_dir
        stage_dir.mkdir(parents=True, exist_ok=True)
        log = self.work_dir / f"{name}.log"
        argv = [sys.executable, "-m", "bigssl_jax.cli", command, *args]
        env = {"JAX_COMPILATION_CACHE_DIR": str(self.data_dir / XLA_CACHE), **os.environ}
        if self.single_threaded:
            env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {ONE_THREAD_XLA_FLAGS}".strip()
        returncode = stage_processes.run(argv, log=log, env=env, name=name)
        if returncode:
            raise StageError(f"stage '{name}' failed (exit {returncode}); see {log}")
        (stage_dir / DONE).write_text(json.dumps({"command": argv[3:]}) + "\n")
        print_stage(name, f"done: {stage_dir}", start)
        return stage_dir

    @staticmethod
    def best_step(run_dir: pathlib.Path) -> os.PathLike:
        """`run_dir`'s step with the best dev metric; `run_dir` itself when it has no checkpoint
        (a done stage runs nothing; a stage to run says so in one line)."""
        try:
            return checkpointing.best_step(run_dir)
        except FileNotFoundError:
            return run_dir

    def train(self, name: str, gin_file: str, bindings) -> pathlib.Path:
        """`bigssl train` of `gin_file` on `self.corpus` with `bindings` (then `self.bindings`)
        as stage `name`."""
        flags = [f"--gin_bindings={b}" for b in (*bindings, *self.bindings)]
        return self.run(
            name,
            "train",
            f"--gin_file={gin_file}",
            f"--gin_bindings=CORPUS = '{self.corpus}'",
            f"--gin_bindings=VOCAB_SIZE = {self.preset.vocab_size}",
            *flags,
            f"--model_dir={self.work_dir / name}",
            f"--data_dir={self.data_dir}",
        )

    def pretrain(self) -> pathlib.Path:
        """Stage `PRETRAIN`: the preset's self-supervised pre-training."""
        return self.train(PRETRAIN, self.preset.pretrain_gin, self.preset.pretrain_bindings)

    def finetune(self, name: str, init: pathlib.Path | None, bindings=()) -> pathlib.Path:
        """The preset's fine-tuning, from scratch or from the encoder of run `init`."""
        init_binding = [f"TrainerConfig.init_checkpoint = '{init}'"] if init else []
        return self.train(
            name,
            self.preset.finetune_gin,
            [*self.preset.finetune_bindings, *init_binding, *bindings],
        )

    def pseudo_label(
        self, name: str, teacher: pathlib.Path, task: str, lm: tuple | None = None
    ) -> pathlib.Path:
        """Stage `name`: `teacher` (its best step on dev) transcribes the unlabeled
        split as pseudo-labeled `task`, with beam search fused with `lm` = (n-gram run,
        weight) when given."""
        labels = self.work_dir / name
        return self.run(
            name,
            "pseudo-label",
            f"--checkpoint={self.best_step(teacher)}",
            f"--data_dir={self.data_dir}",
            f"--corpus={self.corpus}",
            "--split=unlabeled",
            f"--output_dir={labels}",
            f"--name={task}",
            *self.preset.pseudo_label_flags,
            *self.fusion_flags(lm),
        )

    def fusion_flags(self, lm: tuple | None) -> list[str]:
        """The decoding flags of beam search fused with `lm` = (LM run, weight), or none."""
        if lm is None:
            return []
        run_dir, weight = lm
        return [
            f"--beam_size={self.preset.beam_size}",
            f"--lm_checkpoint={run_dir}",
            f"--lm_weight={weight}",
        ]

    def count_ngram(self, text_file: os.PathLike) -> pathlib.Path:
        """Stage `ngram`: the preset's token n-gram LM counted on `text_file`."""
        return self.run(
            "ngram",
            "train-ngram",
            f"--text_file={text_file}",
            f"--corpus={self.corpus}",
            f"--vocab_size={self.preset.vocab_size}",
            f"--order={self.preset.ngram_order}",
            f"--model_dir={self.work_dir / 'ngram'}",
            f"--data_dir={self.data_dir}",
        )

    def choose_lm_weight(self, model: str, run_dir: pathlib.Path, ngram: pathlib.Path) -> float:
        """The preset's fusion weight with the lowest dev WER (then CER) for `run_dir`, each
        weight scored by stage `evaluate_<model>_lm<weight>` on dev only (a single weight
        is taken as it is)."""
        if len(self.preset.lm_weights) == 1:
            return self.preset.lm_weights[0]
        dev = {
            weight: self.evaluate(f"{model}_lm{weight:g}", run_dir, ("dev",), (ngram, weight))
            for weight in self.preset.lm_weights
        }
        return min(dev, key=lambda w: (dev[w]["dev"]["wer"], dev[w]["dev"]["cer"]))

    def student(self, name: str, init: pathlib.Path, labels: pathlib.Path) -> pathlib.Path:
        """A noisy student: fine-tuning from `init` on labeled + `labels` batches mixed."""
        return self.finetune(
            name,
            init,
            [
                f"ExperimentConfig.pseudo_labels = ('{labels}',)",
                f"ExperimentConfig.mix_ratios = {tuple(self.preset.mix_ratios)}",
                *self.preset.student_bindings,
            ],
        )

    def evaluate(
        self, model: str, run_dir: pathlib.Path, splits=EVAL_SPLITS, lm: tuple | None = None
    ) -> dict[str, dict[str, float]]:
        """Stage `evaluate_<model>`: {split: {'wer': ..., 'cer': ...}} of `run_dir`'s best
        step on dev, decoded greedily or with beam search fused with `lm` = (LM
        run, weight)."""
        name = f"evaluate_{model}"
        stage_dir = self.run(
            name,
            "evaluate",
            f"--checkpoint={self.best_step(run_dir)}",
            f"--data_dir={self.data_dir}",
            f"--splits={','.join(splits)}",
            f"--output_dir={self.work_dir / name}",
            *self.fusion_flags(lm),
        )
        scored = json.loads((stage_dir / "results.json").read_text())["results"]
        return {
            split: {rate: metrics[rate] for rate in ERROR_RATES if rate in metrics}
            for split, metrics in scored.items()
        }


def _semi_supervised_stages(runner: Runner) -> dict[str, pathlib.Path]:
    """Stages 5-8: pre-training, baseline, teacher, pseudo-labels and students."""
    preset = runner.preset
    pretrained = runner.pretrain()
    models = {"baseline": runner.finetune("baseline", None)}
    models["teacher"] = teacher = runner.finetune("teacher", pretrained)
    for generation in range(1, preset.generations + 1):
        labels = runner.pseudo_label(
            f"pseudo_label_{generation}", teacher, f"{runner.corpus}_pseudo_{generation}"
        )
        teacher = runner.student(f"student_{generation}", pretrained, labels)
        models[f"student_{generation}"] = teacher
    return models


def claim_stages(
    runner: Runner, share: LabeledShare, text_file: pathlib.Path | None
) -> tuple[dict[str, pathlib.Path], pathlib.Path | None]:
    """The data-efficiency design's stages (`PipelinePreset.labeled_fraction` < 1).

    With p = the share's percentage: the n-gram LM of the text-only sentences, the share's
    arms `supervised_<p>`, `ssl_<p>` and `nst_<p>` (`share_arms`), and `supervised_100`
    (from scratch on the whole pool: the topline).

    Returns:
      (model name -> run dir, in table order; the n-gram LM run or None).
    """
    preset, tag = runner.preset, f"{100 * share.fraction:g}"
    if preset.side_by_side:
        one = dataclasses.replace(runner, single_threaded=True)
        pretrained, topline = side_by_side(
            one.pretrain, lambda: one.finetune("supervised_100", None)
        )
    else:
        pretrained, topline = runner.pretrain(), None
    ngram = None
    if preset.ngram_order:
        if text_file is None:
            raise StageError("the n-gram LM needs a corpus with text-only sentences")
        ngram = runner.count_ngram(text_file)
    arms = dataclasses.replace(runner, corpus=share.corpus)
    names = (f"supervised_{tag}", f"ssl_{tag}", f"nst_{tag}")
    models = share_arms(arms, names, pretrained, ngram)
    models["supervised_100"] = topline or runner.finetune("supervised_100", None)
    return models, ngram


def side_by_side(*calls):
    """Runs zero-argument `calls` (each running stages) at the same time; their results."""
    with concurrent.futures.ThreadPoolExecutor(len(calls)) as pool:
        futures = [pool.submit(call) for call in calls]
        return [future.result() for future in futures]


def share_arms(
    runner: Runner,
    names: tuple[str, str, str],
    pretrained: pathlib.Path,
    ngram: pathlib.Path | None,
) -> dict[str, pathlib.Path]:
    """The three arms on `runner.corpus` (a labeled share), as stages named `names`:
    supervised (from scratch), ssl (the pre-trained encoder fine-tuned: the teacher) and the
    noisy students (per generation g, `runner.corpus`'s unlabeled split pseudo-labeled by the
    latest model with beam search fused with `ngram` at the weight best on dev, then a student
    from the pre-trained encoder on labeled + pseudo-labeled batches; `<nst>_g<g>` with
    several generations)."""
    supervised, ssl, nst = names
    generations = runner.preset.generations
    task = f"{runner.corpus}_{runner.work_dir.name}_pseudo"  # one per work dir (seed)
    if runner.preset.side_by_side:
        one = dataclasses.replace(runner, single_threaded=True)
        scratch, teacher = side_by_side(
            lambda: one.finetune(supervised, None), lambda: one.finetune(ssl, pretrained)
        )
    else:
        scratch, teacher = runner.finetune(supervised, None), runner.finetune(ssl, pretrained)
    models = {supervised: scratch, ssl: teacher}
    teacher_name = ssl
    for generation in range(1, generations + 1):
        lm = (ngram, runner.choose_lm_weight(teacher_name, teacher, ngram)) if ngram else None
        labels = runner.pseudo_label(
            f"pseudo_label_{generation}", teacher, f"{task}_{generation}", lm
        )
        teacher_name = nst + (f"_g{generation}" if generations > 1 else "")
        teacher = models[teacher_name] = runner.student(teacher_name, pretrained, labels)
    return models


def _evaluate(
    runner: Runner, models: dict[str, pathlib.Path], ngram: pathlib.Path | None = None
) -> dict[str, dict]:
    """Stage 9: every model's WER / CER per split, greedy and (with `ngram`) as row
    `<model>+lm`, fused at its own weight chosen on dev; the table and the plot."""
    results = {}
    for name, run_dir in models.items():
        results[name] = runner.evaluate(name, run_dir)
        if ngram is not None:
            lm = (ngram, runner.choose_lm_weight(name, run_dir, ngram))
            results[f"{name}+lm"] = runner.evaluate(f"{name}_fused", run_dir, EVAL_SPLITS, lm)
    write_results(results, runner.work_dir)
    return results


def prepare_inputs(preset: PipelinePreset, *, data_dir: os.PathLike, seed: int, jobs: int) -> str:
    """Stages 1-4: corpus, prepared splits, vocabulary and one batch of each kind.

    Returns:
      The registry name of the prepared embedded corpus.

    Raises:
      StageError: a batch of the labeled or unlabeled task could not be read (the
        message says why).
    """
    from bigssl_jax import experiment

    root = paths.embedded_corpus_dir(data_dir, preset.corpus_preset)
    start = time.perf_counter()
    info, made = synthetic_corpus.make_corpus(
        root, preset=preset.corpus_preset, seed=seed, jobs=jobs
    )
    hours = sum(split["hours"] for split in info["splits"].values())
    print_stage("corpus", f"{'made' if made else 'found'} {root} ({hours:.2f} h of audio)", start)

    start = time.perf_counter()
    reports = prepare.prepare_embedded(root, data_dir=data_dir)
    corpus = reports[0].corpus
    for report in reports:
        print_stage("prepare", report.summary(), start)

    ensure_vocabulary(data_dir, corpus, preset.vocab_size, text_file=text_only_file(root))
    for kind in ("labeled", "unlabeled"):
        task = f"{corpus}_{kind}_{kind}"
        try:
            experiment.show_batches(
                corpus,
                data_dir=data_dir,
                task=task,
                num_batches=1,
                batch_size=preset.batch_size,
                vocab_size=preset.vocab_size,
            )
        except experiment.BatchesError as error:
            raise StageError(f"stage 'batches' failed: no batch of task {task}: {error}") from error
    return corpus


def _scored_step(work_dir: pathlib.Path, model: str) -> int:
    """The checkpoint step stage `evaluate_<model>` scored (its `results.json`)."""
    return json.loads((work_dir / f"evaluate_{model}" / "results.json").read_text())["step"]


def work_dir(data_dir: os.PathLike, preset_name: str) -> pathlib.Path:
    """`<data_dir>/pipeline/<preset>`: where the pipeline of `preset_name` runs its stages."""
    return pathlib.Path(data_dir) / "pipeline" / preset_name


def run(preset_name: str, *, data_dir: os.PathLike, seed: int = 0, jobs: int = 1) -> int:
    """Runs every stage of `preset_name`; returns the exit code (0 = all stages done).

    Raises:
      StageError: a stage failed (its log is named).
    """
    preset = PRESETS[preset_name]
    start = time.perf_counter()
    corpus = prepare_inputs(preset, data_dir=data_dir, seed=seed, jobs=jobs)
    runner = Runner(preset, corpus, pathlib.Path(data_dir), work_dir(data_dir, preset_name))
    ngram, judged = None, None
    if preset.labeled_fraction < 1.0:
        root = paths.embedded_corpus_dir(data_dir, preset.corpus_preset)
        vocabulary = ensure_vocabulary(data_dir, corpus, preset.vocab_size)
        share = make_labeled_share(
            data_dir, corpus, preset.labeled_fraction, root=root, seed=seed,
            vocab_size=preset.vocab_size, jobs=jobs, vocabulary=vocabulary,
        )  # fmt: skip
        models, ngram = claim_stages(runner, share, text_only_file(root))
    else:
        models = _semi_supervised_stages(runner)
    results = _evaluate(runner, models, ngram)
    if preset.labeled_fraction < 1.0:
        judged = claims.claim_summary(runner.work_dir, results, list(models), root)
    record = {
        "command": f"bigssl pipeline --preset={preset_name}",
        "preset": preset_name,
        "corpus": corpus,
        "source_commit": provenance.source_commit(),
        "wall_seconds": round(time.perf_counter() - start, 1),
        "steps": {name: _scored_step(runner.work_dir, name) for name in models},
        "arms": results,
        "claims": judged,
        "dev_curves": dev_curves(models),
    }
    plot_dev_curves(record["dev_curves"], runner.work_dir / "dev_curves.png")
    (runner.work_dir / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")
    print(f"\nWER / CER (%) on {corpus} ({runner.work_dir / 'results.png'}):\n")
    print(results_table(results), flush=True)
    return 0


def publish(preset_name: str, data_dir: os.PathLike, path: os.PathLike) -> int:
    """Writes the record of the finished run of `preset_name` to `path`: its `run.json` with
    every error rate in %, each training run's dev curve and, for the data-efficiency
    design, the claims recomputed from its evaluations (`claim_summary`); beside it
    `<stem>.md` (the WER / CER table and the claims in words, what the README quotes) and
    `<stem>_dev_curves.png`. Runs no stage.

    Raises:
      StageError: the run has not finished (no `run.json`).
    """
    preset = PRESETS[preset_name]
    runner_dir = work_dir(data_dir, preset_name)
    record_path = runner_dir / RECORD_FILE
    if not record_path.exists():
        raise StageError(f"no finished run of preset '{preset_name}': {record_path} is missing")
    record = json.loads(record_path.read_text())
    names = [name for name in record["arms"] if not name.endswith("+lm")]
    record["dev_curves"] = dev_curves({name: runner_dir / name for name in names})
    table = [results_table(record["arms"])]
    if preset.labeled_fraction < 1.0:
        root = paths.embedded_corpus_dir(data_dir, preset.corpus_preset)
        record["claims"] = claims.claim_summary(runner_dir, record["arms"], names, root)
        table += ["", *claims.claim_lines(record["claims"])]
    record["arms"] = {
        name: {split: {k: 100 * v for k, v in rates.items()} for split, rates in scores.items()}
        for name, scores in record["arms"].items()
    }
    record["units"] = "error rates in %"
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    path.with_suffix(".md").write_text("\n".join(table) + "\n")
    plot_dev_curves(record["dev_curves"], path.with_name(f"{path.stem}_dev_curves.png"))
    print(f"pipeline: wrote {path}, {path.with_suffix('.md')} and the dev curves")
    return 0
