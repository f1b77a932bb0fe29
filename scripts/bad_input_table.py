"""Regenerate docs/bad-input.md: run every case of tests/test_bad_input.py and record what the user sees.

HF_HUB_OFFLINE=1 QUANTWISE_PROGRESS=0 .venv/bin/python scripts/bad_input_table.py > docs/bad-input.md
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import sys
import tempfile
from pathlib import Path

from quantwise.cli import main

spec = importlib.util.spec_from_file_location("bad_input", Path(__file__).parents[1] / "tests" / "test_bad_input.py")
assert spec and spec.loader
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)

print("# Bad input: what is tried and what the user sees\n")
print("Every case is a test in `tests/test_bad_input.py`: exit code 2, one line on stderr, no traceback,")
print("the user's own folder byte-identical afterwards and no temporary files left. Paths are shortened to `T/`.\n")
print("| case | command | exit | what the user sees |")
print("|---|---|---|---|")
home = os.getcwd()
for name, argv, _expected in mod.CASES:
    with tempfile.TemporaryDirectory() as d:
        t = Path(d)
        (t / "mine" / "sub").mkdir(parents=True)
        (t / "mine" / "notes.txt").write_text("x")
        (t / "work").mkdir()
        os.chdir(t / "work")
        args = argv(t)
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(args)
        os.chdir(home)
        shown = err.getvalue().strip().replace(d, "T").replace("|", "\\|")
        cmd = " ".join(a.replace(d, "T") for a in args).replace("|", "\\|")
        print(f"| {name} | `quantwise {cmd}` | {code} | {shown} |")
sys.stdout.flush()
