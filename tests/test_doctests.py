"""The documentation's examples run: the ``>>>`` examples in memjax's docstrings
(doctest) and every ```python block of README.md.

README convention: each ```python block is self-contained (its own imports, run
in a fresh namespace from a temporary working directory). A block whose lines
start with ``>>>`` runs as a doctest (printed output is compared); any other
block is executed as a script. A block is not run (e.g. one that needs the
Omniglot data or a long training) when its first line is ``# doctest: skip``, or
when the line just above its fence is ``<!-- doctest: skip -->`` (invisible on
the rendered page).
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import re
from pathlib import Path

import pytest

import memjax

README = Path(__file__).resolve().parents[1] / "README.md"
SKIP_MARKER = "# doctest: skip"
HTML_SKIP_MARKER = "<!-- doctest: skip -->"
OPTIONFLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE

# Docstring examples that fail today, by doctest name, with the reason. The mark
# is strict: once an example passes, its entry here must go.
KNOWN_FAILURES = {
}


def _module_names() -> list[str]:
  names = [memjax.__name__]
  # A package that fails to import is still listed (its import fails in _docstring_tests).
  names += [m.name for m in pkgutil.walk_packages(memjax.__path__, memjax.__name__ + ".", onerror=lambda name: None)]
  return sorted(names)


def _docstring_tests() -> list:
  """``pytest.param(doctest)`` for every docstring of memjax with examples (an
  import error becomes a failing parameter)."""
  finder = doctest.DocTestFinder(exclude_empty=True)
  params = []
  for name in _module_names():
    try:
      module = importlib.import_module(name)
    except Exception as e:  # noqa: BLE001 - reported by the test below
      params.append(pytest.param(e, id=f"{name} (import)"))
      continue
    for test in finder.find(module, name):
      if not test.examples:
        continue
      marks = ()
      if test.name in KNOWN_FAILURES:
        marks = pytest.mark.xfail(reason=KNOWN_FAILURES[test.name], strict=True)
      params.append(pytest.param(test, id=test.name, marks=marks))
  return params


def _run_doctest(test: doctest.DocTest) -> None:
  runner = doctest.DocTestRunner(optionflags=OPTIONFLAGS)
  report = []
  runner.run(test, out=report.append)
  if runner.failures:
    pytest.fail(f"{runner.failures} of {runner.tries} examples of {test.name} failed:\n" + "".join(report),
                pytrace=False)


@pytest.mark.parametrize("test", _docstring_tests())
def test_docstring_examples(test, monkeypatch, tmp_path):
  if isinstance(test, Exception):
    raise test
  monkeypatch.chdir(tmp_path)
  _run_doctest(test)


def readme_blocks(text: str) -> list[tuple[int, str, bool]]:
  """``(line, code, skip)`` of every ```python block in ``text``: the 1-based line of
  its first code line, the code, and whether it carries a skip marker."""
  blocks = []
  for m in re.finditer(r"^```python[ \t]*\n(.*?)^```[ \t]*$", text, re.M | re.S):
    code = m.group(1)
    above = text[:m.start()].rstrip("\n").rsplit("\n", 1)[-1].strip()
    first = code.strip().splitlines()[0].strip() if code.strip() else ""
    skip = above == HTML_SKIP_MARKER or first.startswith(SKIP_MARKER)
    blocks.append((text.count("\n", 0, m.start(1)) + 1, code, skip))
  return blocks


def _readme_params() -> list:
  if not README.exists():
    return [pytest.param(None, None, marks=pytest.mark.skip(reason="README.md is not in this checkout"),
                         id="README.md")]
  return [pytest.param(line, code, id=f"README.md:{line}",
                       marks=pytest.mark.skip(reason="marked `doctest: skip`") if skip else ())
          for line, code, skip in readme_blocks(README.read_text(encoding="utf-8"))]


def run_block(line: int, code: str) -> None:
  """Runs one README block in a fresh namespace: as a doctest if it has ``>>>`` prompts, else as a script
  (tracebacks give README.md's line numbers)."""
  if re.search(r"^\s*>>>", code, re.M):
    _run_doctest(doctest.DocTestParser().get_doctest(code, {"__name__": "__main__"}, f"README.md:{line}",
                                                     str(README), line - 1))
  else:
    exec(compile("\n" * (line - 1) + code, str(README), "exec"), {"__name__": "__main__"})


@pytest.mark.parametrize("line,code", _readme_params())
def test_readme_python_blocks(line, code, monkeypatch, tmp_path):
  monkeypatch.chdir(tmp_path)
  run_block(line, code)


def test_readme_blocks_are_found():
  """The block parser: line numbers, both skip markers, and a non-python fence left alone."""
  text = ("intro\n```python\nx = 1\n```\n```bash\nls\n```\n```python\n# doctest: skip\ny\n```\n"
          "<!-- doctest: skip -->\n```python\nz\n```\n")
  assert readme_blocks(text) == [(3, "x = 1\n", False), (9, "# doctest: skip\ny\n", True), (14, "z\n", True)]
  run_block(1, ">>> 1 + 1\n2\n")
  with pytest.raises(pytest.fail.Exception, match="1 of 1 examples"):
    run_block(1, ">>> 1 + 1\n3\n")
  with pytest.raises(NameError):
    run_block(1, "undefined_name\n")
