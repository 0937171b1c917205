"""The documentation runs as written: every ```sh and ```python block of README.md and docs/ is executed, in
page order, in one shared working folder; a block that cannot run here says why in the page source
(<!-- not run: reason -->), and a long one is marked <!-- slow -->. A block that shows a refusal is marked
<!-- exit 2 -->: each command in it followed by a comment `# deconvviz: error: ...` must exit 2 and print that
one line (`...` in it stands for any text; only the weights notice may come before it, where the refusal comes
after the network loaded), so a refusal the docs show that stops happening fails here. A paragraph of docs/ that
says something is refused is followed in its section by a block that shows it, or points to one
(test_every_refusal_the_docs_state_is_shown). The site builds with `mkdocs build --strict`."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from deconvviz.cli import app

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"(?:^<!-- (?P<marker>[^\n]*?) -->\n)?^```(?P<lang>sh|python)\n(?P<code>.*?)^```", re.S | re.M)
MARKER = re.compile(r"not run: \S.{9,}|slow|exit 2")  # a reason of ten characters at least
REFUSAL = "# deconvviz: error: "  # in an exit 2 block: the line the command before it prints


@dataclass
class Block:
    page: str
    line: int
    lang: str
    code: str
    marker: str | None

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def nav_pages(nav) -> list[str]:
    """The pages of mkdocs.yml's nav, in order."""
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, dict):
        return [p for v in nav.values() for p in nav_pages(v)]
    return [p for item in nav for p in nav_pages(item)]


def pages() -> list[Path]:
    """README.md, then the docs in nav order, then any page the nav does not list yet."""
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    listed = [ROOT / "docs" / p for p in nav_pages(config["nav"])]
    rest = sorted(p for p in (ROOT / "docs").rglob("*.md") if p not in listed)
    return [ROOT / "README.md", *listed, *rest]


def blocks() -> list[Block]:
    found = []
    for path in pages():
        text = path.read_text()
        for m in FENCE.finditer(text):
            line = text.count("\n", 0, m.start("lang")) + 1
            found.append(Block(str(path.relative_to(ROOT)), line, m["lang"], m["code"], m["marker"]))
    return found


BLOCKS = blocks()


def test_every_marker_is_known_and_every_not_run_says_why():
    assert BLOCKS, "no code blocks found"
    bad = [f"{b.id}: <!-- {b.marker} -->" for b in BLOCKS if b.marker and not MARKER.fullmatch(b.marker)]
    assert not bad, "markers are <!-- slow -->, <!-- exit 2 --> or <!-- not run: REASON -->:\n" + "\n".join(bad)


def test_every_exit_2_block_shows_its_line_after_each_refused_command():
    """An exit 2 block holds refusals: at least one, each line right after a command, none after a comment."""
    refusals = [b for b in BLOCKS if b.marker == "exit 2"]
    assert refusals, "no <!-- exit 2 --> block in the docs"
    for b in refusals:
        assert b.lang == "sh", f"{b.id}: an exit 2 block is a sh block"
        steps = refused_commands(b.code)
        assert any(expected for _, expected in steps), f"{b.id}: no '{REFUSAL}...' line after a command"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """The folder every block runs in, with the checkout's package data and scripts at hand (the docs' paths),
    and `python`/`deconvviz` on PATH for shell lines that are not a deconvviz command."""
    work = tmp_path_factory.mktemp("docs")
    for name in ("deconvviz", "scripts"):
        (work / name).symlink_to(ROOT / name)
    bin_dir = tmp_path_factory.mktemp("bin")
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    (bin_dir / "deconvviz").write_text(f'#!/bin/sh\nexec {sys.executable} -m deconvviz "$@"\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    work.joinpath(".bin").symlink_to(bin_dir)
    return work


def shell_env(work: Path) -> dict[str, str]:
    path = f"{work / '.bin'}:{os.environ['PATH']}"
    return {**os.environ, "PATH": path, "PYTHONPATH": str(ROOT), "PWD": str(work)}


def commands(code: str) -> list[str]:
    """The block's commands: a heredoc with the rest of its line as one, every other line split on '&&'; a line
    ending in a backslash continues on the next, as in the shell."""
    out, lines = [], iter(re.sub(r"\\\n\s*", " ", code).splitlines())
    for line in lines:
        heredoc = re.search(r"<<'?(\w+)'?", line)
        if heredoc:
            body = [line]
            for more in lines:
                body.append(more)
                if more == heredoc[1]:
                    break
            out.append("\n".join(body))
        elif line.strip():
            out.extend(part.strip() for part in line.split(" && "))
    return out


def refused_commands(code: str) -> list[tuple[str, str | None]]:
    """An exit 2 block's commands, each with the one line it must print (None: it must succeed). The line is the
    comment right after the command, without its '# '."""
    steps: list[tuple[str, str | None]] = []
    for command in commands(code):
        if command.startswith(REFUSAL):
            assert steps and steps[-1][1] is None and not steps[-1][0].startswith("#"), (
                f"{command!r} follows no command"
            )
            steps[-1] = (steps[-1][0], command[2:])
        else:
            steps.append((command, None))
    return steps


def matches(expected: str, line: str) -> bool:
    """The printed line is the expected one, where '...' in the expected stands for any text."""
    return re.fullmatch(".*".join(map(re.escape, expected.split("..."))), line) is not None


def run_command(command: str, work: Path, refusal: str | None = None) -> None:
    """A deconvviz command in-process (typer's runner, its environment assignments applied), anything else
    through bash. With a refusal: exit 2, that line on stderr (after the weights notice at most), nothing on stdout."""
    env = shell_env(work)
    words = [] if "<<" in command else shlex.split(command, comments=True)
    assignments = {}
    while words and re.fullmatch(r"[A-Z_]+=.*", words[0]):
        key, value = words.pop(0).split("=", 1)
        assignments[key] = os.path.expandvars(value.replace("$PWD", str(work)))
    if words and words[0] == "deconvviz":
        r = CliRunner().invoke(app, words[1:], env=assignments, catch_exceptions=False)
        code, stdout, stderr = r.exit_code, r.stdout, r.stderr
    else:
        p = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", command], cwd=work, env=env, capture_output=True, text=True
        )
        code, stdout, stderr = p.returncode, p.stdout, p.stderr
    if refusal is None:
        assert code == 0, f"{command}\nexit {code}: {stdout}{stderr}"
        return
    assert code == 2, f"{command}\nexit {code}, not 2 as the docs show: {stdout}{stderr}"
    assert stdout == "", f"{command}\nprinted on stdout: {stdout}"
    *before, last = stderr.splitlines() or [""]  # a refusal found while computing follows the weights notice
    shown = matches(refusal, last) and all(line.startswith("deconvviz: weights: ") for line in before)
    assert shown, f"{command}\nthe docs show: {refusal}\nit printed: {stderr}"


RUN = [
    pytest.param(b, id=b.id, marks=[pytest.mark.slow] if b.marker == "slow" else [])
    for b in BLOCKS
    if not (b.marker or "").startswith("not run")
]


@pytest.mark.parametrize("block", RUN)
def test_block_runs(block: Block, workspace: Path, monkeypatch):
    monkeypatch.chdir(workspace)
    if block.lang == "python":
        exec(compile(block.code, block.id, "exec"), {"__name__": "__docs__"})
        return
    if block.marker == "exit 2":
        for command, refusal in refused_commands(block.code):
            run_command(command, workspace, refusal)
        return
    for command in commands(block.code):
        run_command(command, workspace)


# Options the docs may name that belong to other programs: the scripts' own (read from their argparse calls below)
# and these, each with its program.
FOREIGN_OPTIONS = {"--strict": "mkdocs build", "--nproc-per-node": "torchrun"}
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
RULE_NAMES = re.compile(r"--rules?[ =]([a-z]+(?:,[a-z]+)*)|\brules?=\(?\[?[\"']([a-z_]+)[\"']")
UNPOOL_NAMES = re.compile(r"--unpool[ =]([a-z]+)|\bunpool=[\"']([a-z_]+)[\"']")
CONVENTION_NAMES = re.compile(r"`([a-z]+ fixed|[a-z]+ rule)\b")


@dataclass(frozen=True)
class Known:
    """What the code has: the CLI's options, the scripts' options, the rules, unpoolings and conventions."""

    options: frozenset[str]
    rules: frozenset[str]
    unpools: frozenset[str]
    conventions: frozenset[str]


def known() -> Known:
    import typer.main

    from deconvviz import RULES
    from deconvviz.engine import UNPOOLS
    from deconvviz.engine._ops import CONVENTIONS

    options = {"--help", *FOREIGN_OPTIONS}
    root = typer.main.get_command(app)
    for command in [root, *root.commands.values()]:
        options.update(o for p in command.params for o in [*p.opts, *p.secondary_opts] if o.startswith("--"))
    for script in (ROOT / "scripts").glob("*.py"):
        options.update(re.findall(r"add_argument\(\s*\"(--[a-z0-9-]+)\"", script.read_text()))
    conventions = {*CONVENTIONS, "no rule"}  # and `layers`' label for an op with no rule ("no rule: op")
    return Known(frozenset(options), frozenset(RULES), frozenset(UNPOOLS), frozenset(conventions))


def unknown_names(text: str, have: Known) -> list[str]:
    """The CLI options, rule names, unpoolings and conventions that `text` names and the code does not have."""
    bad = [o for o in OPTION.findall(text) if o not in have.options]
    for pattern, names, what in (
        (RULE_NAMES, have.rules, "rule"),
        (UNPOOL_NAMES, have.unpools, "unpooling"),
        (CONVENTION_NAMES, have.conventions, "convention"),
    ):
        for m in pattern.finditer(text):
            words = ",".join(g for g in m.groups() if g).split(",")
            bad += [f"{what} {w!r}" for w in words if w not in names]
    return bad


def test_docs_name_only_options_rules_and_conventions_that_the_code_has():
    """Every `--option`, rule (`--rule NAME`, `rule="NAME"`), unpooling and named convention in README.md and docs/
    exists: a renamed or removed one fails here. docs/cli.md is generated from the app itself."""
    have = known()
    found = {
        str(page.relative_to(ROOT)): unknown_names(page.read_text(), have)
        for page in pages()
        if page != ROOT / "docs" / "cli.md"
    }
    assert not {page: bad for page, bad in found.items() if bad}


def test_the_claims_check_finds_a_planted_name():
    """The check above is not blind: a planted option, rule, unpooling and convention are each reported, and the
    real names beside them are not."""
    have = known()
    text = (
        "`deconvviz visualize --layer conv5_3 --no-such-option`, `--rule backwards`, `--rules deconvnet,sideways`, "
        'rule="gradient", rule="upwards", `--unpool switches`, `--unpool sideways`, `std fixed`, `mask fixed`'
    )
    assert unknown_names(text, have) == [
        "--no-such-option",
        "rule 'backwards'",
        "rule 'sideways'",
        "rule 'upwards'",
        "unpooling 'sideways'",
        "convention 'mask fixed'",
    ]


def test_a_refusal_that_stops_happening_fails(workspace: Path):
    """An exit 2 block whose command now succeeds, or prints another line, fails."""
    with pytest.raises(AssertionError, match="not 2 as the docs show"):
        run_command("deconvviz --version", workspace, "deconvviz: error: no such thing")
    with pytest.raises(AssertionError, match="the docs show"):
        run_command("deconvviz visualize --dpi 0", workspace, "deconvviz: error: --dpi: something else")
    run_command("deconvviz visualize --dpi 0", workspace, "deconvviz: error: --dpi: dpi 0 ...; use 1 to 1200...")


def test_mkdocs_build_strict(tmp_path):
    """The site builds with no warning: every page in the nav, every link and reference resolved."""
    r = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "NO_MKDOCS_2_WARNING": "1"},
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "site" / "reference" / "index.html").is_file()


REFUSAL_WORD = re.compile(r"\brefus(?:ed|es)\b", re.I)
POINTER = re.compile(r"<!-- refusal shown in (?P<page>[\w/.-]+\.md)#(?P<anchor>[\w-]+) -->")
HEADING = re.compile(r"^#{1,6} (.*)$", re.M)


def slug(heading: str) -> str:
    """A heading's anchor as mkdocs writes it (Python-Markdown's slugify): punctuation dropped, lower case, each run
    of spaces and hyphens one '-'."""
    return re.sub(r"[-\s]+", "-", re.sub(r"[^\w\s-]", "", heading).strip().lower())


def shows_a_refusal(lang: str, marker: str | None, code: str) -> bool:
    """An exit 2 block, or a python block that catches deconvviz's error (`except ...DeconvvizError`)."""
    return marker == "exit 2" or (lang == "python" and re.search(r"except .*DeconvvizError", code) is not None)


def refusal_sections(text: str) -> dict[str, bool]:
    """A page's sections by anchor, each with whether it holds a block that shows a refusal."""
    masked = FENCE.sub(lambda m: re.sub(r"[^\n]", " ", m[0]), text)  # headings outside code only, same offsets
    heads = list(HEADING.finditer(masked))
    ends = [h.start() for h in heads[1:]] + [len(text)]
    return {
        slug(h[1]): any(shows_a_refusal(m["lang"], m["marker"], m["code"]) for m in FENCE.finditer(text[h.end() : e]))
        for h, e in zip(heads, ends, strict=True)
    }


def unshown_refusals(text: str, page_of=lambda page: None) -> list[str]:
    """The paragraphs of `text` that say something is refused ('refused', 'refuses') and that neither a block
    later in their section shows (an exit 2 block, or a python block that catches DeconvvizError) nor a pointer
    `<!-- refusal shown in PAGE.md#anchor -->` in the paragraph sends to a section that shows one; each as
    'line N: its start'. page_of(name) is the text of the page a pointer names (None: no such page)."""
    masked = FENCE.sub(lambda m: re.sub(r"[^\n]", " ", m[0]), text)  # code blocks blanked, same offsets
    heads = [m.start() for m in HEADING.finditer(masked)]
    shown = [m.start() for m in FENCE.finditer(text) if shows_a_refusal(m["lang"], m["marker"], m["code"])]
    bad = []
    for para in re.finditer(r"(?:^[^\n]*\S[^\n]*(?:\n|$))+", masked, re.M):
        if not REFUSAL_WORD.search(para[0]) or HEADING.match(para[0]):
            continue
        where = f"line {text.count(chr(10), 0, para.start()) + 1}: {' '.join(para[0].split())[:100]}"
        pointer = POINTER.search(para[0])
        if pointer:
            target = page_of(pointer["page"])
            if not (target is not None and refusal_sections(target).get(pointer["anchor"])):
                bad.append(f"{where} (its pointer leads to no refusal shown)")
            continue
        end = min([h for h in heads if h > para.start()], default=len(text))
        if not any(para.end() <= at < end for at in shown):
            bad.append(where)
    return bad


def test_every_refusal_the_docs_state_is_shown():
    """Every paragraph of docs/ (docs/cli.md aside: it is the app's help) that says something is refused, with
    the word 'refused' or 'refuses', is followed in its section (up to the next heading) by a block that shows a
    refusal: an exit 2 block, or a python block that catches deconvviz.DeconvvizError and prints it. Where the
    refusal is shown elsewhere, the paragraph says where: `<!-- refusal shown in PAGE.md#anchor -->` (PAGE
    relative to docs/), and that section holds such a block. A refusal stated in the docs and never shown fails."""
    docs = ROOT / "docs"

    def page_of(name: str) -> str | None:
        path = docs / name
        return path.read_text() if path.is_file() else None

    found = {
        str(page.relative_to(ROOT)): unshown_refusals(page.read_text(), page_of)
        for page in sorted(docs.rglob("*.md"))
        if page != docs / "cli.md"
    }
    bad = {page: paragraphs for page, paragraphs in found.items() if paragraphs}
    assert not bad, "refusals stated and not shown:\n" + "\n".join(f"{p}: {b}" for p, bs in bad.items() for b in bs)


def test_the_refusal_check_finds_a_planted_unshown_refusal():
    """The check above is not blind: a refusal with no block after it, one whose block comes before it, and one
    whose pointer leads to a section with no refusal are found; a shown one and a good pointer are not."""
    shown = "<!-- exit 2 -->\n```sh\ndeconvviz visualize --dpi 0\n# deconvviz: error: --dpi: ...\n```\n"
    page = (
        "# Page\n\nA negative dpi is refused.\n\n" + shown + "\n## Later\n\nA zero size is refused too.\n\n"
        "## Other\n\n" + shown + "\nA tall image is refused.\n\n"
        "## Pointing\n\nThe dpi is refused <!-- refusal shown in p.md#page -->.\n\n"
        "A size is refused <!-- refusal shown in p.md#later -->.\n"
    )
    bad = unshown_refusals(page, {"p.md": page}.get)
    assert bad == [
        "line 13: A zero size is refused too.",
        "line 23: A tall image is refused.",
        "line 29: A size is refused <!-- refusal shown in p.md#later -->. (its pointer leads to no refusal shown)",
    ]
