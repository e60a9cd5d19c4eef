"""One split of a TFDS speech builder whose data is already on disk, e.g. `librispeech`.
See `data.sources` for what a source yields.
"""

import dataclasses
import functools
from collections.abc import Iterator

from bigssl_jax.data import audio_io, schema, sources


@functools.lru_cache(maxsize=8)
def _tfds_builder(name: str, data_dir: str | None):
    """The TFDS builder `name` reading from `data_dir` (built once per process)."""
    import tensorflow_datasets as tfds

    try:
        return tfds.builder(name, data_dir=data_dir)
    except Exception as error:  # tfds raises several types for an unknown/unbuilt dataset
        raise sources.SourceError(
            f"TFDS dataset '{name}' is not available under {data_dir}: {error}"
        ) from error


@dataclasses.dataclass
class TfdsSource(sources.Source):
    """One split of a TFDS speech builder whose data is already on disk (no downloads).

    Made for `librispeech` (features `speech`, `text`, `speaker_id`, `chapter_id`,
    `id`); any builder with one `Audio` feature works, labeled iff it has `text` and
    `unlabeled` is False (else the transcript is kept as `oracle_text`).
    Shards read contiguous slices (`split[a:b]`) when the builder knows its split
    sizes, else (hand-made data dirs, `tfds.testing.mock_data`) skip/take.
    """

    split: str
    data_dir: str | None = None
    name: str = "librispeech"
    unlabeled: bool = False
    _length: int | None = dataclasses.field(default=None, repr=False)

    def _builder(self):
        return _tfds_builder(self.name, self.data_dir)

    @property
    def description(self) -> str:
        return f"tfds:{self.name}/{self.split}@{self.data_dir}"

    @property
    def _features(self):
        return self._builder().info.features

    @property
    def labeled(self) -> bool:
        return "text" in self._features and not self.unlabeled

    @property
    def extra_fields(self) -> tuple[str, ...]:
        fields = ("chapter",) if "chapter_id" in self._features else ()
        oracle = self.unlabeled and "text" in self._features
        return (*fields, schema.ORACLE_TEXT_FIELD) if oracle else fields

    def _split_info(self):
        splits = self._builder().info.splits
        return splits[self.split] if self.split in splits else None

    def _dataset(self, start: int | None = None, stop: int | None = None):
        import tensorflow_datasets as tfds

        builder = self._builder()
        sliced = self._split_info() is not None and start is not None
        split = f"{self.split}[{start}:{stop}]" if sliced else self.split
        try:
            dataset = builder.as_dataset(split=split, shuffle_files=False)
        except Exception as error:  # not prepared / unknown split: one clear line
            raise sources.SourceError(
                f"cannot read TFDS {self.name}/{self.split} under "
                f"{self.data_dir} (prepare it with TFDS first): {error}"
            ) from error
        if start is not None and not sliced:
            dataset = dataset.skip(start).take(stop - start)
        return tfds.as_numpy(dataset)

    def __len__(self) -> int:
        if self._length is None:
            info = self._split_info()
            self._length = (
                int(info.num_examples) if info is not None else sum(1 for _ in self._dataset())
            )
        return self._length

    def fingerprint(self) -> str:
        return f"{self.description}|{self.unlabeled}|{self._builder().info.version}|{len(self)}"

    def estimated_bytes(self) -> int:
        info = self._split_info()
        return int(info.num_bytes) if info is not None else 0

    def _audio_key(self) -> tuple[str, int]:
        import tensorflow_datasets as tfds

        for key, feature in self._features.items():
            if isinstance(feature, tfds.features.Audio):
                return key, int(feature.sample_rate or schema.SAMPLE_RATE)
        raise sources.SourceError(f"TFDS dataset '{self.name}' has no Audio feature")

    def read(self, start: int, stop: int) -> Iterator[sources.Utterance | sources.Skipped]:
        audio_key, rate = self._audio_key()
        for index, example in enumerate(self._dataset(start, stop), start=start):
            uid = example["id"].decode("utf-8") if "id" in example else f"{self.split}-{index}"
            text = example["text"].decode("utf-8") if "text" in example else None
            extra = {"chapter": str(example["chapter_id"])} if "chapter_id" in example else {}
            if self.unlabeled and text is not None:
                extra[schema.ORACLE_TEXT_FIELD], text = text, None
            audio = audio_io.pcm16_from_array(example[audio_key], rate)
            yield sources.Utterance(
                uid,
                f"{self.description}[{index}]",
                audio,
                str(example.get("speaker_id", "")),
                text,
                extra,
            )
