"""The docs stay honest: links resolve, and commands name real scripts and flags.

Checks README.md, CHANGELOG.md and docs/*.md without importing TensorFlow or
running any script:

* every relative link (``[text](path)``, ``![alt](path)``, ``[ref]: path``,
  ``src="path"``) names an existing file, and an anchor (``path.md#x`` or
  ``#x``) names a heading of that page (GitHub's heading ids);
* every ``python scripts/X.py ...`` or ``python benchmarks/X.py ...`` command
  (in code blocks, inline code or plain lines; ``\\`` continuations joined)
  names an existing script and only flags that the script defines. A
  script's flags are read with ``ast`` from its ``flags.DEFINE_*`` calls, the
  local modules it imports that define flags, and absl's own flags; boolean
  flags also take their ``--noX`` form. A ``--flagfile=F`` in a command must
  exist, and its flags (nested flagfiles included) must be the script's too;
* the user pages carry no internal issue numbers, no paths into a
  development machine's ``../shared`` folder and no lab-notebook phrases.

The checker is tested on small strings with a bad link and a bad flag, so the
test cannot pass by finding nothing.
"""

from __future__ import annotations

import ast
import functools
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT_DIRS = ("scripts", "benchmarks")

# Flags every absl program has: absl.flags (flagfile, undefok), absl.app's
# help and debugging flags, absl.logging's flags. Booleans take --noX too.
ABSL_FLAGS = frozenset(
    {
        "flagfile",
        "undefok",
        "help",
        "helpshort",
        "helpfull",
        "helpxml",
        "only_check_args",
        "pdb",
        "pdb_post_mortem",
        "run_with_pdb",
        "run_with_profiling",
        "profile_file",
        "use_cprofile_for_profiling",
        "logtostderr",
        "alsologtostderr",
        "log_dir",
        "logger_levels",
        "verbosity",
        "v",
        "stderrthreshold",
        "showprefixforinfo",
    }
)
ABSL_BOOLEANS = frozenset(
    {
        "help",
        "helpshort",
        "helpfull",
        "helpxml",
        "only_check_args",
        "pdb",
        "pdb_post_mortem",
        "run_with_pdb",
        "run_with_profiling",
        "use_cprofile_for_profiling",
        "logtostderr",
        "alsologtostderr",
        "showprefixforinfo",
    }
)
_BOOL_DEFINES = frozenset({"DEFINE_bool", "DEFINE_boolean"})


def doc_files() -> list[Path]:
    """The user-facing pages the checks cover."""
    files = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
    return [f for f in files if f.exists()]


# --------------------------------------------------------------------------
# Markdown structure: code blocks, inline code, links, headings.

_FENCE = re.compile(r"^( {0,3})(`{3,}|~{3,})[^\n]*\n(.*?)^\1?\2[`~]*[ \t]*$", re.M | re.S)
_INLINE_CODE = re.compile(r"(`+)((?:(?!\n[ \t]*\n).)+?)\1", re.S)  # never across paragraphs


def split_markdown(text: str) -> tuple[list[str], list[str], str]:
    """Returns (fenced code blocks, inline code spans, the remaining prose).

    The prose keeps its line structure (code replaced by blanks), so indented
    code blocks and plain lines are still there to scan.
    """
    blocks = []

    def _block(m):
        blocks.append(m.group(3))
        return "\n" * m.group(0).count("\n")

    prose = _FENCE.sub(_block, text)
    spans = []

    def _span(m):
        spans.append(m.group(2))
        return " " * len(m.group(0).replace("\n", "")) + "\n" * m.group(0).count("\n")

    prose = _INLINE_CODE.sub(_span, prose)
    return blocks, spans, prose


def heading_ids(text: str) -> set[str]:
    """GitHub's ids of a page's headings (lower case, punctuation dropped,
    spaces to hyphens, ``-1``, ``-2`` for repeats)."""
    blocks_removed = _FENCE.sub("", text)
    ids: set[str] = set()
    counts: dict[str, int] = {}
    for line in blocks_removed.splitlines():
        m = re.match(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        title = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", m.group(1))  # links -> text
        slug = re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")
        n = counts.get(slug, 0)
        counts[slug] = n + 1
        ids.add(slug if n == 0 else f"{slug}-{n}")
    return ids


_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REF_LINK = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.M)
_SRC = re.compile(r"""\b(?:src|href)\s*=\s*["']([^"']+)["']""")
_EXTERNAL = re.compile(r"^(?:[a-zA-Z][a-zA-Z0-9+.-]*:|//)")  # http:, https:, mailto:, //host


def link_targets(text: str) -> list[str]:
    """Every link target of a page outside code."""
    _, _, prose = split_markdown(text)
    return [m.group(1) for pattern in (_LINK, _REF_LINK, _SRC) for m in pattern.finditer(prose)]


def check_links(path: Path, text: str) -> list[str]:
    """Problems with the relative links of ``text`` (a page at ``path``)."""
    problems = []
    for target in link_targets(text):
        if _EXTERNAL.match(target):
            continue  # not fetched
        file_part, _, anchor = target.partition("#")
        if file_part:
            resolved = (path.parent / file_part).resolve()
            if not resolved.exists():
                problems.append(f"{path.name}: link to {target}: {resolved} does not exist")
                continue
            page = resolved.read_text(encoding="utf-8") if resolved.suffix == ".md" else None
        else:
            page = text  # an anchor on the same page
        if anchor and page is not None:
            if anchor.lower() not in heading_ids(page):
                problems.append(f"{path.name}: link to {target}: no heading #{anchor} there")
    return problems


# --------------------------------------------------------------------------
# Scripts' flags, read statically.


def _literal_strings(node: ast.AST, env: dict[str, list]) -> list | None:
    """The values an expression can take, when they are literals or tuples of
    them (through loop variables and module constants); else None."""
    if isinstance(node, ast.Constant):
        return [node.value]
    if isinstance(node, ast.Name):
        return env.get(node.id)
    if isinstance(node, ast.JoinedStr):
        values = [""]
        for part in node.values:
            if isinstance(part, ast.Constant):
                options = [str(part.value)]
            elif isinstance(part, ast.FormattedValue):
                options = _literal_strings(part.value, env)
            else:
                options = None
            if options is None:
                return None
            values = [v + str(o) for v in values for o in options]
        return values
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _literal_strings(node.left, env), _literal_strings(node.right, env)
        if left is None or right is None:
            return None
        return [a + b for a in left for b in right]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        items = []
        for element in node.elts:
            if isinstance(element, (ast.Tuple, ast.List)):
                inner = [_literal_strings(e, env) for e in element.elts]
                if any(i is None or len(i) != 1 for i in inner):
                    return None
                items.append(tuple(i[0] for i in inner))
            else:
                values = _literal_strings(element, env)
                if values is None:
                    return None
                items.extend(values)
        return items
    if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("tuple", "list", "sorted"):
        return _literal_strings(node.args[0], env) if node.args else None
    if isinstance(node, ast.Dict):
        keys = [_literal_strings(k, env) for k in node.keys if k is not None]
        if any(k is None for k in keys):
            return None
        return [v for k in keys for v in k]
    return None


def _bind(target: ast.AST, values: list, env: dict[str, list]) -> None:
    """Binds a for-loop target to the values it takes."""
    if isinstance(target, ast.Name):
        env[target.id] = [v[0] if isinstance(v, tuple) and len(v) == 1 else v for v in values]
    elif isinstance(target, (ast.Tuple, ast.List)):
        for i, element in enumerate(target.elts):
            if isinstance(element, ast.Name):
                env[element.id] = [
                    v[i] for v in values if isinstance(v, tuple) and len(v) == len(target.elts)
                ]


class _FlagCollector(ast.NodeVisitor):
    """Collects ``DEFINE_*`` flag names (and which are boolean) of a module."""

    def __init__(self, env: dict[str, list]):
        self.env = dict(env)
        self.names: set[str] = set()
        self.booleans: set[str] = set()
        self.aliases: list[tuple[str, str]] = []
        self.unresolved: list[str] = []

    def visit_For(self, node: ast.For) -> None:
        values = _literal_strings(node.iter, self.env)
        saved = dict(self.env)
        if values is not None:
            _bind(node.target, values, self.env)
        self.generic_visit(node)
        self.env = saved

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        define = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if define.startswith("DEFINE_"):
            name_node = node.args[0] if node.args else None
            for keyword in node.keywords:
                if keyword.arg == "name":
                    name_node = keyword.value
            names = _literal_strings(name_node, self.env) if name_node is not None else None
            if names is None or not all(isinstance(n, str) for n in names):
                self.unresolved.append(f"line {node.lineno}: {ast.unparse(node)[:80]}")
            else:
                self.names.update(names)
                if define in _BOOL_DEFINES:
                    self.booleans.update(names)
                if define == "DEFINE_alias" and len(node.args) > 1:
                    originals = _literal_strings(node.args[1], self.env) or []
                    self.aliases += [(n, o) for n in names for o in originals]
        self.generic_visit(node)


def _module_constants(tree: ast.Module) -> dict[str, list]:
    env = {}
    for statement in tree.body:
        if isinstance(statement, ast.Assign) and len(statement.targets) == 1:
            target = statement.targets[0]
            if isinstance(target, ast.Name):
                values = _literal_strings(statement.value, env)
                if values is not None:
                    env[target.id] = values
    return env


def _local_module(dotted: str, script_dir: Path) -> Path | None:
    """The file of a local module (the repository or the script's folder)."""
    parts = dotted.split(".")
    for base in (ROOT, script_dir):
        for candidate in (
            base.joinpath(*parts).with_suffix(".py"),
            base.joinpath(*parts, "__init__.py"),
        ):
            if candidate.is_file():
                return candidate
    return None


def _imported_modules(tree: ast.Module, script_dir: Path) -> list[Path]:
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            path = _local_module(name, script_dir)
            if path is not None:
                found.append(path)
    return found


@functools.cache
def script_flags(path: Path) -> tuple[frozenset[str], frozenset[str], tuple[str, ...]]:
    """(flag names, boolean flag names, unresolved DEFINE calls) of a script,
    its flag-defining local imports and absl."""
    names, booleans, unresolved = set(ABSL_FLAGS), set(ABSL_BOOLEANS), []
    aliases = []
    seen: set[Path] = set()
    queue = [path]
    while queue:
        module = queue.pop()
        if module in seen:
            continue
        seen.add(module)
        source = module.read_text(encoding="utf-8")
        if module != path and "DEFINE_" not in source:
            continue
        tree = ast.parse(source, filename=str(module))
        collector = _FlagCollector(_module_constants(tree))
        collector.visit(tree)
        names |= collector.names
        booleans |= collector.booleans
        aliases += collector.aliases
        unresolved += [f"{module.relative_to(ROOT)} {u}" for u in collector.unresolved]
        queue += _imported_modules(tree, path.parent)
    booleans |= {alias for alias, original in aliases if original in booleans}
    return frozenset(names), frozenset(booleans), tuple(unresolved)


def flag_known(name: str, names: frozenset[str], booleans: frozenset[str]) -> bool:
    return name in names or (name.startswith("no") and name[2:] in booleans)


# --------------------------------------------------------------------------
# Commands in the docs.

_COMMAND = re.compile(r"\bpython3?\s+((?:scripts|benchmarks)/[\w.-]+\.py)(?![\w.-])(.*)")
_SEPARATORS = {"|", "||", "&", "&&", ";", ">", ">>", "<", ">&", "(", ")", "2>", "2>&"}


def _logical_lines(text: str) -> list[str]:
    return re.sub(r"\\[ \t]*\n[ \t]*", " ", text).splitlines()


def find_commands(text: str) -> list[tuple[str, list[str]]]:
    """Every (script, arguments) command of a page: code blocks, inline code,
    and plain (e.g. indented) lines."""
    blocks, spans, prose = split_markdown(text)
    lines = [line for block in blocks for line in _logical_lines(block)]
    lines += [" ".join(span.split()) for span in spans]
    lines += _logical_lines(prose)
    commands = []
    for line in lines:
        for m in _COMMAND.finditer(line):
            rest = m.group(2)
            try:
                lexer = shlex.shlex(rest, posix=True, punctuation_chars=True)
                lexer.whitespace_split = True
                lexer.commenters = "#"
                tokens = list(lexer)
            except ValueError:  # unbalanced quotes in prose
                tokens = rest.split()
            args = []
            for token in tokens:
                if token in _SEPARATORS or set(token) <= set("|&;<>()") or token == "--":
                    break
                args.append(token)
            commands.append((m.group(1), args))
    return commands


def _flagfile_flags(flagfile: Path, seen: set[Path]) -> tuple[list[str], list[str]]:
    """(flag names, problems) of a flagfile and the flagfiles it includes."""
    if flagfile in seen:
        return [], []
    seen.add(flagfile)
    names, problems = [], []
    for line in flagfile.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line.startswith("--"):
            continue
        name, _, value = line[2:].partition("=")
        names.append(name)
        if name == "flagfile":
            nested = (ROOT / value).resolve()
            if nested.is_file():
                more, more_problems = _flagfile_flags(nested, seen)
                names += more
                problems += more_problems
            else:
                problems.append(
                    f"{flagfile.name} includes --flagfile={value}, which does not exist"
                )
    return names, problems


def check_commands(path: Path, text: str) -> list[str]:
    """Problems with the script commands of ``text`` (a page at ``path``)."""
    problems = []
    for script, args in find_commands(text):
        script_path = ROOT / script
        if not script_path.is_file():
            problems.append(f"{path.name}: `python {script}`: no such script")
            continue
        names, booleans, unresolved = script_flags(script_path)
        if unresolved:
            problems.append(
                f"{path.name}: cannot read every flag of {script} statically: {'; '.join(unresolved)}"
            )
        for arg in args:
            if not arg.startswith("--"):
                continue
            name, _, value = arg[2:].partition("=")
            if not flag_known(name, names, booleans):
                problems.append(f"{path.name}: `python {script}` has no flag --{name}")
            elif name == "flagfile" and value and "$" not in value and "..." not in value:
                flagfile = (ROOT / value).resolve()
                if not flagfile.is_file():
                    problems.append(f"{path.name}: --flagfile={value} does not exist")
                    continue
                file_flags, file_problems = _flagfile_flags(flagfile, set())
                problems += [f"{path.name}: {p}" for p in file_problems]
                problems += [
                    f"{path.name}: {value} (for {script}) has flag --{n}, which {script} lacks"
                    for n in file_flags
                    if not flag_known(n, names, booleans)
                ]
    return problems


# --------------------------------------------------------------------------
# Files and modules of the repository that a page names.

_REPO_PATH = re.compile(r"(?<![\w/.-])((?:tests|pss_keras|scripts|benchmarks)/[\w/.-]*\w)")
_MODULE = re.compile(r"(?<![\w.])pss_keras((?:\.[a-z_][a-z0-9_]*)+)")


def _module_exists(parts: list[str]) -> bool:
    """Whether ``pss_keras.<parts[0]>...`` starts with a module of the
    package (what follows may be a name inside it)."""
    folder = ROOT / "pss_keras"
    if not parts:
        return True
    head = parts[0]
    if (folder / head / "__init__.py").exists():
        return True
    if (folder / f"{head}.py").exists() or (folder / f"_{head}.py").exists():
        return True
    # A name of pss_keras itself (pss_keras.Supernet is capitalised; lower-case
    # names are functions of __init__.py).
    init = (folder / "__init__.py").read_text(encoding="utf-8")
    return re.search(rf"^def {re.escape(head)}\b|\"{re.escape(head)}\"", init, re.M) is not None


# Paths in the reference implementation's repository (PSS-Net), not in ours.
_REFERENCE_PATHS = ("scripts/lut", "scripts/train/")


def check_paths(path: Path, text: str) -> list[str]:
    """Repository files and pss_keras modules the page names that do not
    exist (a line that says a path "moved" may name the old one)."""
    problems = []
    for number, line in enumerate(text.splitlines(), start=1):
        if "moved" in line:
            continue
        for m in _REPO_PATH.finditer(line):
            name = m.group(1).rstrip(".")
            if "*" in name or "<" in name or name.startswith(_REFERENCE_PATHS):
                continue
            if not (ROOT / name).exists():
                problems.append(f"{path.name}:{number}: {name} does not exist")
        for m in _MODULE.finditer(line):
            parts = m.group(1).strip(".").split(".")
            if not parts[0].startswith("__") and not _module_exists(parts):
                problems.append(f"{path.name}:{number}: pss_keras.{'.'.join(parts)} does not exist")
    return problems


# --------------------------------------------------------------------------
# Words that do not belong on a user's page.

_NOT_FOR_USERS = [
    (re.compile(r"\.\./shared\b"), "a path into a development machine's ../shared"),
    (re.compile(r"(?i)\bissues?\s*#?\s*\d+"), "an internal issue number"),
    (re.compile(r"(?<![\w/&#])#\d+\b"), "an internal issue number"),
    (
        re.compile(r"(?i)\b(?:this|that|the previous|the last|an earlier) (?:stop|session)\b"),
        "lab-notebook wording",
    ),
    (re.compile(r"(?i)first wrote this README"), "lab-notebook wording"),
    (re.compile(r"(?i)\b(?:measured|ran|took|run|built) here\b"), "lab-notebook wording"),
    (re.compile(r"(?i)\bon this (?:machine|CPU)\b"), "lab-notebook wording"),
]


def check_wording(path: Path, text: str, history: bool = False) -> list[str]:
    """Problems with the wording of a user page (the changelog keeps its
    history but no ../shared paths)."""
    problems = []
    rules = _NOT_FOR_USERS[:1] if history else _NOT_FOR_USERS
    for number, line in enumerate(text.splitlines(), start=1):
        # External issue links (github.com/.../issues/N) are references, not tracker numbers.
        checked = re.sub(r"https?://\S+", "", line)
        for pattern, what in rules:
            m = pattern.search(checked)
            if m:
                problems.append(f"{path.name}:{number}: {what}: {m.group(0)!r}")
    return problems


# --------------------------------------------------------------------------
# Tests.


@pytest.fixture(autouse=True)
def _independent_random_state():
    """Overrides conftest's seeding fixture of the same name, which imports
    TensorFlow: these tests use no random state and stay TF-free and fast."""
    yield


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_links_resolve(path):
    assert check_links(path, path.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_commands_name_real_scripts_and_flags(path):
    assert check_commands(path, path.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_wording_is_for_users(path):
    history = path.name == "CHANGELOG.md"
    assert check_wording(path, path.read_text(encoding="utf-8"), history=history) == []


@pytest.mark.parametrize(
    "path",
    [p for p in doc_files() if p.name != "CHANGELOG.md"],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_named_files_and_modules_exist(path):
    assert check_paths(path, path.read_text(encoding="utf-8")) == []


def test_the_path_checker_finds_a_missing_file_and_module():
    page = (
        "See `tests/test_serving.py` and `pss_keras/serving/client.py`;\n"
        "`pss_keras.flops.count_mflops`, `pss_keras.cost.flops.count_mflops`,\n"
        "`pss_keras.Supernet`, `pss_keras.load_latency_table`.\n"
    )
    assert check_paths(Path("page.md"), page) == [
        "page.md:1: tests/test_serving.py does not exist",
        "page.md:2: pss_keras.flops.count_mflops does not exist",
    ]


def test_pages_exist():
    names = {p.name for p in doc_files()}
    assert {"README.md", "CHANGELOG.md", "training.md", "serving.md", "tflite.md"} <= names
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 250


def test_the_docs_have_commands_and_links():
    """Guards against a checker that finds nothing to check."""
    commands = [c for p in doc_files() for c in find_commands(p.read_text(encoding="utf-8"))]
    scripts = {script for script, _ in commands}
    assert len(commands) > 30
    assert {"scripts/train.py", "scripts/export.py", "scripts/query.py"} <= scripts
    links = [t for p in doc_files() for t in link_targets(p.read_text(encoding="utf-8"))]
    assert len([t for t in links if not _EXTERNAL.match(t)]) > 20


def test_every_script_flag_set_is_read():
    for folder in SCRIPT_DIRS:
        for script in sorted((ROOT / folder).glob("*.py")):
            names, _, unresolved = script_flags(script)
            assert not unresolved, (script, unresolved)
    names, booleans, _ = script_flags(ROOT / "scripts" / "train.py")
    assert {"job_dir", "dry_run", "flagfile", "helpfull", "verbosity"} <= names
    assert "dry_run" in booleans and flag_known("nodry_run", names, booleans)


FAKE_PAGE = ROOT / "docs" / "checker_self_test.md"


def test_checker_reports_a_broken_link():
    text = (
        "[good](training.md) [bad](no_such_page.md) ![img](results/missing.png)\n"
        "[anchor](training.md#no-such-heading) [web](https://example.com/x)\n"
        "`[not a link](in_code.md)`\n"
    )
    problems = check_links(FAKE_PAGE, text)
    assert len(problems) == 3, problems
    assert any("no_such_page.md" in p for p in problems)
    assert any("missing.png" in p for p in problems)
    assert any("#no-such-heading" in p for p in problems)


def test_checker_anchors_follow_github_ids():
    text = "# The `--dry_run` flag: check first\n## Setup\n## Setup\n[a](#setup-1) [b](#the---dry_run-flag-check-first)\n"
    assert check_links(FAKE_PAGE, text) == []
    assert len(check_links(FAKE_PAGE, text + "[c](#setup-2)\n")) == 1


def test_checker_reports_unknown_flags_and_scripts():
    text = (
        "```bash\n"
        "python scripts/train.py --flagfile=quickstart.flags --job_dir=J \\\n"
        "    --no_such_flag=3 --dry_run --nodry_run\n"
        "python scripts/no_such_script.py --x=1\n"
        "python scripts/train.py --flagfile=no_such.flags\n"
        "```\n"
        "Inline: `python scripts/export.py --job_dir=J\n--bogus_inline`, and\n"
        "    python benchmarks/benchmark_serving.py --models=mobilenet_v1 --bogus_indented\n"
        "`python scripts/query.py --list_tiers | grep --not_a_query_flag`\n"
    )
    problems = check_commands(FAKE_PAGE, text)
    assert any("--no_such_flag" in p for p in problems), problems
    assert any("no_such_script.py" in p for p in problems), problems
    assert any("no_such.flags" in p for p in problems), problems
    assert any("--bogus_inline" in p for p in problems), problems
    assert any("--bogus_indented" in p for p in problems), problems
    assert not any("dry_run" in p or "not_a_query_flag" in p for p in problems), problems
    assert len(problems) == 5, problems


def test_checker_reads_flags_defined_in_loops_and_aliases(tmp_path):
    source = (
        "from absl import flags\n"
        "KINDS = ('train', 'val')\n"
        "for kind in KINDS:\n"
        "    flags.DEFINE_string(f'{kind}_dir', None, 'x')\n"
        "for name, default in (('alpha', 1), ('beta', 2)):\n"
        "    flags.DEFINE_integer(name, default, 'x')\n"
        "flags.DEFINE_bool('fast', False, 'x')\n"
        "flags.DEFINE_alias('quick', 'fast')\n"
    )
    script = tmp_path / "s.py"
    script.write_text(source)
    tree = ast.parse(source)
    collector = _FlagCollector(_module_constants(tree))
    collector.visit(tree)
    assert collector.names == {"train_dir", "val_dir", "alpha", "beta", "fast", "quick"}
    assert collector.unresolved == []
    dynamic = _FlagCollector({})
    dynamic.visit(ast.parse("import flags\nflags.DEFINE_string(compute(), None, 'x')\n"))
    assert len(dynamic.unresolved) == 1


def test_checker_reports_wording():
    text = "Measured here on this machine (issue #12, see issue 18); data in ../shared/data.\n"
    problems = check_wording(FAKE_PAGE, text)
    assert len(problems) >= 4, problems
    assert check_wording(FAKE_PAGE, "keras-team/keras: https://github.com/k/k/issues/20585\n") == []
    assert len(check_wording(FAKE_PAGE, "see ../shared/x and issue #3\n", history=True)) == 1
