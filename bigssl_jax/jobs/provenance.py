"""Where a recorded result came from: the commit of the code that produced it.

provenance.source_commit()   # '3f2098a...' ('+dirty' with uncommitted changes), or None
"""

import pathlib
import subprocess


def source_commit() -> str | None:
    """The git commit of the code that runs (with '+dirty' when the checkout has uncommitted
    changes), or None outside a git checkout."""
    root = pathlib.Path(__file__).resolve().parents[2]

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(root), *args], capture_output=True, text=True, check=True
            )
        except (OSError, subprocess.CalledProcessError):
            return None
        return done.stdout.strip()

    commit = git("rev-parse", "HEAD")
    if commit and git("status", "--porcelain", "--untracked-files=no"):
        commit += "+dirty"
    return commit
