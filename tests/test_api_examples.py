"""Every ```python block of docs/API.md runs as it is (each block stands alone)."""

import re

import pytest
from harness import REPO

BLOCKS = re.findall(r"```python\n(.*?)```", (REPO / "docs" / "API.md").read_text(), re.S)


def test_api_md_has_examples():
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_api_example_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(BLOCKS[index], f"docs/API.md block {index + 1}", "exec"),
         {"__name__": "__api_example__"})
