"""The corpus registry: a small JSON file naming every prepared corpus.

`bigssl prepare` registers each split it writes; seqio tasks (`bigssl_tasks`) look
corpora up here by name. The file lives at `<data_dir>/registry.json`:

    {"corpora": {"embedded_small": {
        "source": "/abs/path/it/was/prepared/from",
        "splits": {"labeled": {"files": ["/abs/.../labeled-00000-of-00004.tfrecord", ...],
                               "num_examples": 1000, "hours": 1.02, "labeled": true,
                               "extra_fields": ["accent", "voice"]}, ...}}}}

Writes are atomic (temporary file, then rename), and `bigssl prepare` registers a split's new
shards before it deletes the old ones, so an entry never names deleted files; should one
anyway (files removed by hand, a copied registry), reading it raises `MissingShardsError`,
which names the first missing file and the command that rewrites them.
"""

import dataclasses
import json
import os
import pathlib

from bigssl_jax import paths


class CorpusNotFoundError(KeyError):
    """A corpus or split name that the registry does not hold."""

    def __str__(self) -> str:
        return str(self.args[0])


class MissingShardsError(CorpusNotFoundError):
    """A registered split whose shard files are not all there."""


@dataclasses.dataclass(frozen=True)
class SplitInfo:
    """One prepared split: its shards and what they hold."""

    files: tuple[str, ...]
    num_examples: int
    hours: float
    labeled: bool
    extra_fields: tuple[str, ...] = ()

    def to_json(self) -> dict:
        return {
            "files": list(self.files),
            "num_examples": self.num_examples,
            "hours": self.hours,
            "labeled": self.labeled,
            "extra_fields": list(self.extra_fields),
        }

    @classmethod
    def from_json(cls, data: dict) -> "SplitInfo":
        return cls(
            files=tuple(data["files"]),
            num_examples=int(data["num_examples"]),
            hours=float(data["hours"]),
            labeled=bool(data["labeled"]),
            extra_fields=tuple(data.get("extra_fields", ())),
        )


class CorpusRegistry:
    """Reads and updates the registry file at `path`."""

    def __init__(self, path: os.PathLike):
        self.path = pathlib.Path(path)

    def _load(self) -> dict:
        if not self.path.exists():
            return {"corpora": {}}
        try:
            return json.loads(self.path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"corpus registry {self.path} is not valid JSON: {error}") from error

    def _store(self, data: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        tmp.replace(self.path)

    def corpora(self) -> list[str]:
        """Names of every registered corpus, sorted."""
        return sorted(self._load()["corpora"])

    def splits(self, corpus: str) -> dict[str, SplitInfo]:
        """The splits of `corpus`.

        Raises:
          CorpusNotFoundError: `corpus` is not registered (the message lists the known names).
          MissingShardsError: a split names a shard file that does not exist.
        """
        corpora = self._load()["corpora"]
        if corpus not in corpora:
            known = ", ".join(sorted(corpora)) or "none"
            raise CorpusNotFoundError(
                f"corpus '{corpus}' is not in the registry {self.path} (registered: {known}); "
                "run `bigssl prepare` first"
            )
        splits = {
            name: SplitInfo.from_json(info) for name, info in corpora[corpus]["splits"].items()
        }
        for name, info in sorted(splits.items()):
            self._check_files(corpus, name, info)
        return splits

    def _check_files(self, corpus: str, split: str, info: SplitInfo) -> None:
        """Raises MissingShardsError naming the first of `info.files` that does not exist."""
        missing = [file for file in info.files if not paths.as_path(file).exists()]
        if missing:
            raise MissingShardsError(
                f"corpus '{corpus}' split '{split}' in the registry {self.path} names "
                f"{len(missing)} of {len(info.files)} shard files that do not exist (first: "
                f"{missing[0]}); run `bigssl prepare` for it again"
            )

    def split(self, corpus: str, split: str) -> SplitInfo:
        """One split of `corpus`; raises CorpusNotFoundError with the known split names."""
        splits = self.splits(corpus)
        if split not in splits:
            raise CorpusNotFoundError(
                f"corpus '{corpus}' has no split '{split}' (has: {', '.join(sorted(splits))})"
            )
        return splits[split]

    def register_split(self, corpus: str, split: str, info: SplitInfo, *, source: str) -> None:
        """Adds or replaces one split of `corpus`."""
        data = self._load()
        entry = data["corpora"].setdefault(corpus, {"source": source, "splits": {}})
        entry["source"] = source
        entry["splits"][split] = info.to_json()
        self._store(data)
