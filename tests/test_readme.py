"""The README's commands exist as written.

Every ```bash / ```sh / ```console block is split into commands; each `ovss ...` command (also
`python -m ovss ...` and `torchrun ... -m ovss ...`) must parse with the real argument parser (its
subcommand and flags exist) and, unless the block is marked `# needs: ...` (real weights, your own
photo, a downloaded dataset), every file it names must be in the repository. Unmarked ```python
blocks are run. Paths named anywhere in the README (src/, tests/, docs/, benchmarks/, scripts/)
must exist, and `.ci/run` must carry the README's test command exactly.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from ovss.apps.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
FENCE = re.compile(r"^```([A-Za-z]*)[^\n]*\n(.*?)^```", re.DOTALL | re.MULTILINE)
REPO_PATH = re.compile(r"(?<![\w./-])((?:src|tests|docs|benchmarks|scripts)/[\w./-]*[\w/])")
MARK = "# needs:"


def blocks(*langs: str) -> list[tuple[int, str, str]]:
    """(line number, language, text) of the README's fenced blocks in these languages."""
    return [(README[: m.start()].count("\n") + 1, m.group(1), m.group(2)) for m in FENCE.finditer(README)
            if m.group(1) in langs]


def marked(text: str) -> bool:
    return any(line.strip().startswith(MARK) for line in text.splitlines())


def commands(text: str) -> list[list[str]]:
    """Shell commands of a block: continuation lines joined, comments and `$ ` prompts dropped,
    split at && || ; |."""
    text = re.sub(r"\\\n", " ", text)
    out: list[list[str]] = []
    for line in text.splitlines():
        line = re.sub(r"^\s*\$ ", "", line)
        cmd: list[str] = []
        for tok in shlex.split(line, comments=True):
            if tok in ("&&", "||", ";", "|"):
                out.append(cmd)
                cmd = []
            else:
                cmd.append(tok)
        out.append(cmd)
    return [c for c in out if c]


def ovss_args(cmd: list[str]) -> list[str] | None:
    """The arguments after `ovss` (or `-m ovss`), None for other commands."""
    if cmd[0] == "ovss":
        return cmd[1:]
    for i in range(len(cmd) - 1):
        if cmd[i] == "-m" and cmd[i + 1] == "ovss":
            return cmd[i + 2:]
    return None


SHELL = blocks("bash", "sh", "console", "shell")
OVSS = [(line, args, marked(text)) for line, _, text in SHELL for cmd in commands(text)
        if (args := ovss_args(cmd)) is not None]


def test_the_readme_has_commands_to_check():
    assert len(OVSS) >= 6
    assert any(not needs for _, _, needs in OVSS)


@pytest.mark.parametrize("line,args,needs", OVSS, ids=[f"line{line}-{a[0]}" for line, a, _ in OVSS])
def test_ovss_command_parses_and_names_existing_files(line, args, needs):
    parser = build_parser()
    try:
        ns = parser.parse_args(args)
    except SystemExit:
        pytest.fail(f"README line {line}: `ovss {' '.join(args)}` does not parse (unknown subcommand or flag)")
    if needs:
        return  # real weights, a photo or a dataset the repository does not ship
    named = list(getattr(ns, "inputs", []) or [])
    named += [getattr(ns, k) for k in ("classes_file", "weights", "tokenizer") if getattr(ns, k, None)]
    if getattr(ns, "command", None) == "eval" and ns.dataset != "synthetic-scenes":  # the synthetic split is made
        named.append(ns.root)
    named += [a for a in args if REPO_PATH.fullmatch(a)]
    missing = [p for p in named if not (ROOT / p).exists()]
    assert not missing, (f"README line {line}: `ovss {' '.join(args)}` names {missing}, not in the repository; "
                         f"ship them or mark the block `{MARK} ...`")


def _lower_level_lines() -> range:
    """The '### Lower level' section: its blocks build on one another (one `seg`, one `image`) and
    run in sequence in tests/test_readme_lower_level.py, not one by one here."""
    start = README.index("\n### Lower level\n")
    end = README.index("\n#", start + 1)
    return range(README[:start].count("\n") + 1, README[:end].count("\n") + 2)


PYTHON = [(line, text) for line, _, text in blocks("python")
          if not marked(text) and line not in _lower_level_lines()]


def test_unmarked_python_blocks_name_only_shipped_files():
    for line, _, text in blocks("python"):
        if not marked(text):
            assert "photo.jpg" not in text, f"README line {line}: photo.jpg is not shipped; mark the block {MARK}"


@pytest.mark.parametrize("line,text", PYTHON, ids=[f"line{line}" for line, _ in PYTHON])
def test_unmarked_python_block_runs_offline(line, text, tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), HF_HUB_OFFLINE="1")
    r = subprocess.run([sys.executable, "-c", text], cwd=tmp_path, capture_output=True, text=True, env=env,
                       timeout=300, check=False)
    assert r.returncode == 0, f"README line {line} fails:\n{r.stderr[-3000:]}"


def test_python_examples_exist():
    assert len(PYTHON) >= 1, "the README needs one Python example that runs offline"


def test_paths_named_in_the_readme_exist():
    missing = sorted({p for p in REPO_PATH.findall(README) if not (ROOT / p).exists()})
    assert not missing, f"the README names {missing}, which are not in the repository"


def test_ci_runs_the_readme_test_command():
    two = README[README.index("## Two commands"):README.index("\n## ", README.index("## Two commands") + 5)]
    lines = two.splitlines()
    test_cmd = lines[lines.index("# the tests") + 1]
    assert "pytest" in test_cmd and "apt-get" not in test_cmd  # runs without root
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_cmd in ci, f".ci/run must run the README's test command exactly: {test_cmd}"
    main = lines[lines.index(next(ln for ln in lines if ln.startswith("# the main job"))) + 1]
    assert " ovss segment " in main and "--backbone tiny-synthetic" in main
    # the setup block: a virtual environment, so pip works on Debian/Ubuntu's system Python
    assert "python3 -m venv .venv && . .venv/bin/activate" in two
    assert "--index-url https://download.pytorch.org/whl/cpu" not in test_cmd + main
