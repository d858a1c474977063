"""Every relative link and image in README.md and docs/**/*.md points at something that exists.

Docs drift: a file is renamed, a figure moves, a heading is reworded, and the link still renders
fine but leads nowhere. This follows markdown links and images, reference definitions and HTML
src/href attributes; a ``file.md#anchor`` must also name a heading of that file (GitHub's slugs).
Links to other sites (any URL scheme: http, https, mailto ...) and anchors within the same page
are not followed. Links inside code (fenced blocks and `inline spans`) are examples, not links."""
from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

REPO = Path(__file__).resolve().parents[2]

INLINE_TARGET = re.compile(r"\]\(\s*(<[^>]*>|[^)\s]+)")  # the target of [text](...) and ![alt](...)
REFERENCE_DEFINITION = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)")
HTML_ATTRIBUTE = re.compile(r"<[a-zA-Z][^>]*?\b(?:src|href)\s*=\s*[\"']([^\"']+)[\"']")
HTML_ANCHOR = re.compile(r"<[a-zA-Z][^>]*?\b(?:id|name)\s*=\s*[\"']([^\"']+)[\"']")
URL_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
FENCE = re.compile(r"^\s{0,3}(```|~~~)")
INLINE_CODE = re.compile(r"(`+).*?\1")
HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$")


def markdown_files() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def prose_lines(path: Path):
    """(line number, text) of the lines outside fenced code blocks."""
    fence = None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        opening = FENCE.match(line)
        if fence is None and opening:
            fence = opening.group(1)
        elif fence is not None:
            if line.strip().startswith(fence):
                fence = None
        else:
            yield number, line


def link_targets(path: Path):
    """(line number, target) of every link and image in a markdown file."""
    for number, line in prose_lines(path):
        line = INLINE_CODE.sub("", line)
        found = [*INLINE_TARGET.findall(line), *HTML_ATTRIBUTE.findall(line)]
        definition = REFERENCE_DEFINITION.match(line)
        if definition:
            found.append(definition.group(1))
        for target in found:
            yield number, target.strip("<>")


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its rendered text, lower case, punctuation dropped,
    spaces turned into hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link or image: its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "")
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors a markdown file defines: its headings' slugs (repeats get -1, -2 ...), and the
    ids and names of its HTML elements."""
    found, seen = set(), {}
    for _, line in prose_lines(path):
        heading = HEADING.match(line)
        if heading:
            slug = github_slug(heading.group(1))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            found.add(slug if count == 0 else f"{slug}-{count}")
        found.update(HTML_ANCHOR.findall(line))
    return found


def broken_target(source: Path, target: str, root: Path = REPO) -> str | None:
    """Why ``target`` (as written in ``source``) leads nowhere, or None when it resolves. A target
    starting with / is relative to the repository's ``root``, as on GitHub."""
    address, _, anchor = target.partition("#")
    address = unquote(address)
    resolved = root / address.lstrip("/") if address.startswith("/") else source.parent / address
    if not resolved.exists():
        return "no such file"
    if anchor and resolved.suffix == ".md" and unquote(anchor).lower() not in anchors(resolved):
        return f"no heading #{anchor} in {resolved.name}"
    return None


def followed(target: str) -> bool:
    """Whether the checker follows a target: local files only, not URLs or same-page anchors."""
    return bool(target) and not target.startswith("#") and not URL_SCHEME.match(target)


def test_the_files_to_check_exist():
    """A docs folder moved away would otherwise make the link test pass by checking nothing."""
    files = markdown_files()
    assert (REPO / "README.md").is_file() and len(files) > 1, files


def test_every_relative_link_and_image_resolves():
    broken = []
    for source in markdown_files():
        for number, target in link_targets(source):
            if not followed(target):
                continue
            problem = broken_target(source, target)
            if problem:
                broken.append(f"{source.relative_to(REPO)}:{number}: {target} ({problem})")
    assert not broken, "broken links:\n" + "\n".join(broken)


@pytest.mark.parametrize("heading, slug", [
    ("Quick start", "quick-start"),
    ("`pyneuro train`: options", "pyneuro-train-options"),
    ("Results (MNIST, 10k test set)", "results-mnist-10k-test-set"),
    ("S4D / selective_scan", "s4d--selective_scan"),
    ("See [the kernels](docs/kernels/rnn.md)", "see-the-kernels"),
])
def test_github_slug(heading, slug):
    assert github_slug(heading) == slug


def test_checker_finds_what_it_should(tmp_path):
    """The extraction itself: links in prose are found, links in code are not, anchors are checked."""
    page = tmp_path / "page.md"
    page.write_text(
        "# Title\n"
        "## Two words\n"
        "[ok](other.md#a-heading) ![img](fig.png) <img src=\"missing.png\"> [web](https://x.org)\n"
        "`[not a link](nowhere.md)`\n"
        "```\n[in a block](nowhere.md)\n```\n"
        "[bad anchor](other.md#no-such) [self](#two-words) [root](/fig.png)\n"
        "[ref]: gone.md\n",
        encoding="utf-8")
    (tmp_path / "other.md").write_text("## A heading\n", encoding="utf-8")
    (tmp_path / "fig.png").write_bytes(b"")
    targets = [(number, target) for number, target in link_targets(page) if followed(target)]
    assert targets == [(3, "other.md#a-heading"), (3, "fig.png"), (3, "missing.png"),
                       (8, "other.md#no-such"), (8, "/fig.png"), (9, "gone.md")]
    broken = [target for _, target in targets if broken_target(page, target, root=tmp_path)]
    assert broken == ["missing.png", "other.md#no-such", "gone.md"]
    assert "two-words" in anchors(page)
