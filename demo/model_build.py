"""``python -m demo.model_build MODEL_DIR``: `tailor up`'s first-run build of the copy model, in the background.

`tailor train` into ``<MODEL_DIR>/../trained``, then `tailor export --quantize` into a
folder beside ``MODEL_DIR``, which is then moved into place whole: the API and the
background generator, which watch ``MODEL_DIR``, never see half a model. A model
already there (one trained for an older prompt) is kept beside it as ``MODEL_DIR.old``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path


def build(model_dir: Path) -> int:
    cli = [sys.executable, "-m", "cli.main"]
    trained = model_dir.parent / "trained"
    building = model_dir.with_name(model_dir.name + ".building")
    shutil.rmtree(building, ignore_errors=True)
    started = time.monotonic()
    for step in (["train", "--out", str(trained)], ["export", str(trained), "--out", str(building), "--quantize"]):
        print(f"model build: tailor {' '.join(step)}", flush=True)
        code = subprocess.run(cli + step, stdin=subprocess.DEVNULL).returncode
        if code != 0:
            print(
                f"model build: `tailor {step[0]}` failed (code {code}); the demo goes on with default copy", flush=True
            )
            return code
    if model_dir.is_symlink() or model_dir.exists():
        old = model_dir.with_name(model_dir.name + ".old")
        if old.is_symlink() or old.is_file():
            old.unlink()
        else:
            shutil.rmtree(old, ignore_errors=True)
        model_dir.rename(old)
    building.rename(model_dir)
    print(f"model build: the copy model is in {model_dir} after {time.monotonic() - started:.0f} s", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m demo.model_build MODEL_DIR", file=sys.stderr)
        return 2
    return build(Path(args[0]))


if __name__ == "__main__":
    sys.exit(main())
