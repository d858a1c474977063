"""Source rewrites that let g++ compile a .cu file against cuda_emu's headers.

Only two constructs have no C++ spelling that a header could provide:

* ``kernel<<<grid, block, smem, stream>>>(args)`` becomes
  ``::cuda_emu::launch(kernel, ::cuda_emu::LaunchConfig(grid, block, smem, stream), args)``;
* ``extern __shared__ T name[];`` (one array per block whose size is fixed at launch) becomes
  ``T* const name = ::cuda_emu::dynamic_smem<T>();``.

Everything else (keywords, built-ins, intrinsics) is the shim headers' job. Inline PTX is not
rewritten: by the project's convention it lives in csrc/cuda/common.cuh behind
``#if defined(PYNEURO_CUDA_EMULATION)`` (or ``__CUDA_ARCH__``) with a C++ fallback, so g++ never
sees it. Line breaks are kept, and a ``#line`` directive names the original file, so compiler
errors point at the real source.
"""
from __future__ import annotations

import re
from pathlib import Path

_EXTERN_SHARED = re.compile(
    r"extern\s+__shared__\s+(?:__align__\s*\(\s*\d+\s*\)\s*)?"
    r"(?P<type>[A-Za-z_][\w:]*(?:\s*<[^;>]*>)?)\s+(?:__align__\s*\(\s*\d+\s*\)\s*)?"
    r"(?P<name>[A-Za-z_]\w*)\s*\[\s*\]\s*;")
_IDENT = re.compile(r"[\w:]")


def _match_back(text: str, close: int, open_ch: str, close_ch: str) -> int:
    """Index of the bracket that opens the one closing at text[close] (scanning backwards)."""
    depth = 0
    for i in range(close, -1, -1):
        if text[i] == close_ch:
            depth += 1
        elif text[i] == open_ch:
            depth -= 1
            if depth == 0:
                return i
    raise ValueError(f"unbalanced {close_ch!r} before offset {close}")


def _match_forward(text: str, open_: int, open_ch: str, close_ch: str) -> int:
    depth = 0
    for i in range(open_, len(text)):
        if text[i] == open_ch:
            depth += 1
        elif text[i] == close_ch:
            depth -= 1
            if depth == 0:
                return i
    raise ValueError(f"unbalanced {open_ch!r} at offset {open_}")


def _kernel_start(text: str, end: int) -> int:
    """Start of the kernel expression ending just before text[end]: a possibly qualified name with
    an optional template argument list, e.g. ``ns::kernel<T, 4>``."""
    i = end - 1
    while i >= 0 and text[i].isspace():
        i -= 1
    if text[i] == ">":
        i = _match_back(text, i, "<", ">") - 1
    while i >= 0 and text[i].isspace():
        i -= 1
    while i >= 0 and _IDENT.match(text[i]):
        i -= 1
    return i + 1


_COMMENT_OR_STRING = re.compile(r'//[^\n]*|/\*.*?\*/|"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\'', re.S)


def _code_only(text: str) -> str:
    """text with comments and literals blanked (same length, line breaks kept), for searching."""
    return _COMMENT_OR_STRING.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)


def rewrite_launches(text: str) -> tuple[str, int]:
    code = _code_only(text)
    out, pos, count = [], 0, 0
    while (lt := code.find("<<<", pos)) >= 0:
        start = _kernel_start(code, lt)
        gt = code.find(">>>", lt)
        paren = gt + 3
        while code[paren].isspace():
            paren += 1
        if code[paren] != "(":
            raise ValueError(f"kernel launch at line {text.count(chr(10), 0, lt) + 1} has no argument list")
        close = _match_forward(code, paren, "(", ")")
        kernel = text[start:lt].strip()
        config = text[lt + 3:gt].strip()
        args = text[paren + 1:close].strip()
        call = f"::cuda_emu::launch({kernel}, ::cuda_emu::LaunchConfig({config})" + (f", {args})" if args else ")")
        call = " ".join(call.split())  # one line, then the span's line breaks to keep numbering
        out += [text[pos:start], call, "\n" * text.count("\n", start, close + 1)]
        pos, count = close + 1, count + 1
    out.append(text[pos:])
    return "".join(out), count


def rewrite_extern_shared(text: str) -> tuple[str, int]:
    def repl(m: re.Match) -> str:
        t = " ".join(m["type"].split())
        return f"{t}* const {m['name']} = ::cuda_emu::dynamic_smem<{t}>();" + "\n" * m.group(0).count("\n")
    code, out, pos, count = _code_only(text), [], 0, 0
    for m in _EXTERN_SHARED.finditer(code):
        out += [text[pos:m.start()], repl(m)]
        pos, count = m.end(), count + 1
    return "".join(out) + text[pos:], count


def rewrite_source(text: str, origin: str) -> tuple[str, dict]:
    text, launches = rewrite_launches(text)
    text, shared = rewrite_extern_shared(text)
    return f'#line 1 "{origin}"\n' + text, {"launches": launches, "extern_shared": shared}


def mirror_tree(src_root: Path, dst_root: Path, suffixes=(".cu", ".cuh", ".h", ".hpp")) -> dict:
    """Copy every source under src_root with those suffixes to dst_root, rewritten; returns
    {relative path: counts} for the files where something was rewritten."""
    report = {}
    for path in sorted(src_root.rglob("*")):
        if path.suffix not in suffixes or not path.is_file():
            continue
        rel = path.relative_to(src_root)
        text, counts = rewrite_source(path.read_text(), str(path.resolve()))
        dst = dst_root / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_text(text)
        if any(counts.values()):
            report[str(rel)] = counts
    return report
