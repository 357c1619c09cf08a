"""The README's tour runs as written: its python blocks are executed in order, in one namespace."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    assert len(blocks) >= 5
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"README.md python block {i + 1}", "exec"), namespace)
    assert namespace["samples"][0]["model"] is namespace["new_model"]
    assert set(namespace["predict"](namespace["new_model"])) >= {"test_acc", "epoch", "ggap"}


def test_ci_runs_the_readme_test_command():
    readme_command = next(ln for ln in README.read_text().splitlines() if 'pip install -c constraints.txt -e ".[test]"' in ln)
    ci = (README.parent / ".ci" / "run").read_text()
    assert readme_command.strip() in ci
