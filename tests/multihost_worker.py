"""One process of `tests/test_multihost.py`: BEST-RQ pre-training steps on a toy corpus.

    python tests/multihost_worker.py --data_dir=D --model_dir=M --num_steps N1 [N2 ...] \
        --out=PREFIX [--process_id=I --num_processes=P --coordinator=localhost:PORT]

With --num_processes > 1 the process joins a multi-process job (`jax.distributed`) and
reads its own `seqio.ShardInfo` part of the data, wrapped in `distributed.MultiHostIterator`.
With --num_processes=1 it is the single-process reference: it reads the same P parts
itself and concatenates them row-wise, in process order, which is how
`make_array_from_process_local_data` lays the processes' rows out on the batch-sharded mesh
(process p's devices hold rows [p B / P, (p + 1) B / P)). Both therefore train on the same
global batches. Each of the `--num_steps` values is one `trainer.train` call with a fresh
trainer, iterator and checkpoint manager, so the second call restores from disk what the
first saved (params, optimizer state, each process's data position). After each call,
process 0 writes the params to `<out>_<call>.npz`, and the eval loss after the last call.
"""

import argparse
import sys

import numpy as np

CORPUS = "mh_toy"
HOST_BATCH = 4


def parse(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--model_dir", required=True)
    parser.add_argument(
        "--num_steps", type=int, nargs="+", required=True, help="train() calls, in order"
    )
    parser.add_argument("--out", required=True, help="writes <out>_<call>.npz")
    parser.add_argument("--process_id", type=int, default=0)
    parser.add_argument("--num_processes", type=int, default=1)
    parser.add_argument("--parts", type=int, default=2, help="data parts (hosts of the job)")
    parser.add_argument("--coordinator", default=None)
    return parser.parse_args(argv)


class ConcatIterator:
    """Row-wise concatenation of several hosts' iterators (the single-process reference)."""

    def __init__(self, iterators):
        self.iterators = iterators

    def __iter__(self):
        return self

    def __next__(self):
        batches = [next(it) for it in self.iterators]
        return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}

    def get_state(self):
        return {"parts": [it.get_state() for it in self.iterators]}

    def set_state(self, state):
        for it, part in zip(self.iterators, state["parts"], strict=True):
            it.set_state(part)


def _input_config(split, **overrides):
    from bigssl_jax import input_pipeline
    from bigssl_tasks import corpus_tasks

    return input_pipeline.InputConfig(
        task=corpus_tasks.task_name(CORPUS, split, "unlabeled"),
        batch_size=HOST_BATCH,
        bucket_seconds=(1.0,),
        shuffle_buffer_size=16,
        seed=3,
        **overrides,
    )


def _iterator(config, args):
    """This process's iterator (multi-process) or the concatenated parts (reference)."""
    import seqio

    from bigssl_jax import distributed, input_pipeline

    def part(index):
        shard = seqio.ShardInfo(index, args.parts)
        return input_pipeline.make_iterator(config, shard_info=shard)

    if args.num_processes > 1:
        return distributed.MultiHostIterator(part(args.process_id))
    return ConcatIterator([part(i) for i in range(args.parts)])


def _replicated_numpy(tree):
    """Host copies of fully replicated global arrays (read from a local shard)."""
    import jax

    return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)


def train(args, num_steps: int, evaluate: bool = True):
    """One `trainer.train` call (resuming from `args.model_dir` when it holds a checkpoint).

    Returns:
      {name: value}: the eval loss (NaN without `evaluate`), the first step applied (1, or
      the restored step + 1), the final step and every parameter (host copies).
    """
    import jax

    from bigssl_jax import optimizers, partitioning, trainer
    from bigssl_jax.models import best_rq, encoder
    from bigssl_tasks import corpus_tasks

    corpus_tasks.register_corpus_tasks(CORPUS, data_dir=args.data_dir)
    model = best_rq.BestRqTrainModel(
        encoder=encoder.EncoderConfig(
            input_dim=80, model_dim=32, num_layers=1, num_heads=2, subsampling_channels=8
        ),
        objective=best_rq.BestRqConfig(codebook_size=32, span_length=2),
    )
    eval_config = _input_config("dev", shuffle=False, num_epochs=1)
    steps = []
    result = trainer.train(
        model=model,
        optimizer=optimizers.OptimizerConfig(peak_lr=3e-3, warmup_steps=2),
        config=trainer.TrainerConfig(num_steps=num_steps, log_every=1, checkpoint_every=2),
        mesh=partitioning.make_mesh(partitioning.MeshConfig(data=-1)),
        train_iter=_iterator(_input_config("unlabeled"), args),
        model_dir=args.model_dir,
        eval_iter_fn=(lambda: _iterator(eval_config, args)) if evaluate else None,
        hooks=[lambda step, state: steps.append(step)],
    )
    params = _replicated_numpy(result.state.params)
    flat = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(params)}
    eval_loss = result.eval_metrics["loss"] if evaluate else np.nan
    return {"eval_loss": eval_loss, "first_step": steps[0], "step": result.step, **flat}


def main(argv) -> None:
    args = parse(argv)
    import jax

    from bigssl_jax import distributed

    if args.num_processes > 1:
        distributed.initialize(
            distributed.DistributedConfig(
                coordinator_address=args.coordinator,
                num_processes=args.num_processes,
                process_id=args.process_id,
                initialization_timeout=60,
            )
        )
    for index, num_steps in enumerate(args.num_steps):
        values = train(args, num_steps, evaluate=index == len(args.num_steps) - 1)
        if jax.process_index() == 0:
            np.savez(f"{args.out}_{index}.npz", **values)


if __name__ == "__main__":
    main(sys.argv[1:])
