"""Code units from tree-sitter syntax trees: functions, methods, classes/impls with their docs.

A file whose language has a working grammar is parsed. When the tree has errors (a construct newer than the grammar,
such as recent Swift syntax), the units that parsed cleanly are kept and the stretches holding the errors become line
windows; a file with no clean unit, or a language without a grammar, is cut into fixed line windows.
``ParsedFile.parse_failed`` says the tree had errors, ``ParsedFile.has_ast`` that units came from it.
Offsets are byte offsets into the UTF-8 bytes (tree-sitter's own); ``ParsedFile.text`` slices them.
"""

from __future__ import annotations

import ctypes
import importlib
import re
import textwrap
from dataclasses import dataclass, field
from functools import lru_cache

from forge_assets.languages import GRAMMARS, grammar_for

WINDOW_LINES = 60

# Grammars (module, node types of units and blocks) are described per language in forge_assets.languages.
_COMMENT_TYPES = frozenset({"comment", "line_comment", "block_comment", "multiline_comment"})
# Wrappers whose span a unit takes over: decorators, export, `const f = () => ...`.
_WRAPPERS = frozenset({"decorated_definition", "export_statement", "lexical_declaration", "variable_declaration",
                       "template_declaration"})
# The body of a unit whose grammar has no `body` field (Kotlin, Swift protocols): the first child of one of these types.
_BODY_TYPES = ("function_body", "class_body", "enum_class_body", "protocol_body", "constructor_body", "block",
               "declaration_list", "compound_statement", "field_declaration_list")


@dataclass(frozen=True)
class Unit:
    """One function, method or class/impl of a file (or a line window when there is no tree)."""

    kind: str  # "function", "method", "class" or "window"
    name: str
    start: int  # first byte, doc comments and decorators/attributes included
    end: int
    def_start: int  # first byte of the definition itself (after its doc comments)
    body_start: int  # first byte of the body (== end when it has none)
    head_end: int  # end of the signature plus a Python docstring: what a "complete the body" prompt shows
    doc: str  # the cleaned doc comment / docstring, "" when there is none
    depth: int  # how many units enclose this one


@dataclass
class ParsedFile:
    """A file's bytes, its units, and the syntax blocks FIM middles are drawn from."""

    language: str
    data: bytes
    units: list[Unit]
    blocks: list[tuple[int, int, tuple[tuple[int, int], ...]]] = field(default_factory=list)  # (start, end, statements)
    # A grammar exists but the tree has errors: with has_ast, the units that parsed cleanly were kept and the stretches
    # holding the errors became line windows; without, the whole file became line windows.
    parse_failed: bool = False
    has_ast: bool = False

    def text(self, start: int = 0, end: int | None = None) -> str:
        """The text between two byte offsets."""
        return self.data[start:end].decode("utf-8", errors="replace")

    def line_start(self, pos: int) -> int:
        """The byte offset of the start of the line holding pos."""
        return self.data.rfind(b"\n", 0, pos) + 1


def _capsule_pointer(capsule: object) -> int:
    # tree-sitter 0.22's Language() wants an int pointer; 0.23 grammars hand out a PyCapsule.
    get_name = ctypes.pythonapi.PyCapsule_GetName
    get_name.restype, get_name.argtypes = ctypes.c_char_p, [ctypes.py_object]
    get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
    get_pointer.restype, get_pointer.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    return get_pointer(capsule, get_name(capsule))


@dataclass
class _Grammar:
    parser: object
    units: object
    blocks: object
    comments: object


@lru_cache(maxsize=None)
def tree_sitter_language(name: str):
    """The tree_sitter.Language of a grammar Forge ships (python, rust, ..., tsx, shell), or None when it will not load."""
    try:
        import tree_sitter

        grammar = GRAMMARS[name]
        raw = getattr(importlib.import_module(grammar.module), grammar.attr)()
        return tree_sitter.Language(raw if isinstance(raw, int) else _capsule_pointer(raw))
    except Exception:  # noqa: BLE001 - missing wheel, or an ABI this tree-sitter cannot load
        return None


@lru_cache(maxsize=None)
def load_grammar(name: str) -> _Grammar | None:
    """The parser and queries for a grammar, or None when it is missing or of an ABI this tree-sitter cannot load; made
    once per process (compiling the queries costs more than parsing a file)."""
    language = tree_sitter_language(name)
    if language is None:
        return None
    try:
        import tree_sitter

        parser = tree_sitter.Parser(language)
        parser.timeout_micros = 5_000_000  # pathological inputs fall back to windows, never hang
    except Exception:
        return None

    def query(patterns: list[str]) -> object | None:
        ok = []
        for p in patterns:  # a node type a grammar version lacks must not disable the rest
            try:
                language.query(p)
                ok.append(p)
            except Exception:
                continue
        return language.query("\n".join(ok)) if ok else None

    return _Grammar(parser, query(list(GRAMMARS[name].units)), query(list(GRAMMARS[name].blocks)),
                    query([f"({t}) @comment" for t in sorted(_COMMENT_TYPES)]))


def grammar_name(language: str, path: str = "") -> str | None:
    """The grammar a file is parsed with (TSX files get the TSX grammar), or None."""
    grammar = grammar_for(language, path)
    if grammar is not None:
        return grammar.name
    return language if language in GRAMMARS else None  # a grammar's own name (tsx)


def ast_status() -> dict[str, bool]:
    """For each language Forge has a grammar for: whether it loads with the installed tree-sitter."""
    return {name: load_grammar(name) is not None for name in sorted(GRAMMARS)}


def line_windows(data: bytes, max_lines: int = WINDOW_LINES) -> list[Unit]:
    """Fixed windows of max_lines lines over the non-blank parts of a file."""
    units = []
    offsets = [0] + [m.end() for m in re.finditer(b"\n", data)]
    if offsets[-1] != len(data):
        offsets.append(len(data))
    for i in range(0, len(offsets) - 1, max_lines):
        s, e = offsets[i], offsets[min(i + max_lines, len(offsets) - 1)]
        if data[s:e].strip():
            units.append(Unit("window", "", s, e, s, s, s, "", 0))
    return units


_DOC_MARKERS = re.compile(r"^\s*(?:///?!?|/\*\*?|\*/|\*(?!/)|#!?|--)\s?")


_XML_DOC_TAG = re.compile(r"</?(?:summary|remarks|returns|value|para|example|param|typeparam|exception|see|seealso|inheritdoc|c|code)\b[^>]*>")


def _clean_comment(text: str) -> str:
    """Comment text without its markers (///, /** */, #, leading *) and, in C# XML docs, without the tags."""
    if "<summary" in text or "<param" in text:
        text = _XML_DOC_TAG.sub("", text)
    lines = []
    for line in text.splitlines():
        line = line.rstrip()
        if line.endswith("*/"):
            line = line[:-2]
        lines.append(_DOC_MARKERS.sub("", line, count=1).rstrip())
    return "\n".join(lines).strip()


def _docstring(node: object, data: bytes) -> tuple[str, int]:
    """A Python docstring (the body's first statement when it is a string literal) and its end byte."""
    body = node.child_by_field_name("body")
    if body is None or not body.named_children:
        return "", -1
    first = body.named_children[0]
    if first.type != "expression_statement" or not first.named_children or first.named_children[0].type != "string":
        return "", -1
    raw = data[first.start_byte:first.end_byte].decode("utf-8", errors="replace")
    raw = re.sub(r"^[rRbBuUfF]*(\"\"\"|'''|\"|')", "", raw)
    raw = re.sub(r"(\"\"\"|'''|\"|')$", "", raw)
    doc = textwrap.dedent(raw.strip("\n")).strip() if "\n" in raw else raw.strip()
    return doc, first.end_byte


def _comment_lines(comments: list[tuple[int, int, int, int]], data: bytes) -> dict[int, tuple[int, int, int]]:
    """end row -> (start row, start byte, end byte) of comments that stand alone on their lines."""
    out = {}
    for srow, erow, sb, eb in comments:
        line_start = data.rfind(b"\n", 0, sb) + 1
        if data[line_start:sb].strip():
            continue  # a trailing comment after code is not a doc comment
        if data.startswith((b"#!", b"//!", b"/*!", b"# -*-", b"# vim:"), sb):
            continue  # shebangs, inner (module) docs and editor modelines document no unit
        out[erow] = (srow, sb, eb)
    return out


def _text_of(node: object, data: bytes) -> str:
    return data[node.start_byte:node.end_byte].decode("utf-8", "replace")


def _c_declarator_name(node: object, data: bytes) -> str:
    """A C/C++ function's name: down the `declarator` fields (pointers, references) to the function declarator's."""
    decl = node.child_by_field_name("declarator")
    for _ in range(8):
        if decl is None:
            return ""
        if decl.type == "function_declarator":
            inner = decl.child_by_field_name("declarator")
            return _text_of(inner, data) if inner is not None else ""
        decl = decl.child_by_field_name("declarator") or next(
            (c for c in decl.named_children if c.type.endswith("declarator")), None)
    return ""


def _yaml_resource_name(node: object, data: bytes) -> str:
    """A YAML document's `Kind/metadata.name` (a Kubernetes-style resource), or "" for other YAML."""
    mapping = node
    for wanted in ("block_node", "block_mapping"):
        mapping = next((c for c in mapping.named_children if c.type == wanted), None)
        if mapping is None:
            return ""
    found: dict[str, object] = {}
    for pair in mapping.named_children:
        key, value = pair.child_by_field_name("key"), pair.child_by_field_name("value")
        if key is not None and value is not None:
            found[_text_of(key, data).strip()] = value
    kind = _text_of(found["kind"], data).strip().strip("'\"") if "kind" in found else ""
    if not kind or "\n" in kind:
        return ""
    meta = found.get("metadata")
    block = next((c for c in meta.named_children if c.type == "block_mapping"), None) if meta is not None else None
    for pair in block.named_children if block is not None else ():
        key, value = pair.child_by_field_name("key"), pair.child_by_field_name("value")
        if key is not None and value is not None and _text_of(key, data).strip() == "name":
            return f"{kind}/{_text_of(value, data).strip().strip(chr(39) + chr(34))}"
    return kind


def _body_of(node: object) -> object | None:
    body = node.child_by_field_name("body")
    if body is None and node.type not in ("document", "block_mapping_pair"):
        body = next((c for c in node.named_children if c.type in _BODY_TYPES), None)
    return body


def _name_of(node: object, data: bytes) -> str:
    if node.type == "document":
        return _yaml_resource_name(node, data)
    if node.type == "block_mapping_pair":  # a top-level key of a long YAML document
        key = node.child_by_field_name("key")
        return _text_of(key, data).strip() if key is not None else ""
    if node.type in ("deinit_declaration", "subscript_declaration"):
        return node.type.split("_")[0]  # Swift's `deinit` and `subscript` have no name of their own
    if node.type == "function_definition" and node.child_by_field_name("declarator") is not None:
        return _c_declarator_name(node, data)  # C and C++ (Python's and PHP's have a `name`)
    name = node.child_by_field_name("name")
    if name is None and node.type == "impl_item":
        trait, typ = node.child_by_field_name("trait"), node.child_by_field_name("type")
        parts = [data[n.start_byte:n.end_byte].decode("utf-8", "replace") for n in (trait, typ) if n is not None]
        return " for ".join(parts)
    if name is None and node.type == "type_declaration":
        spec = next((c for c in node.named_children if c.type in ("type_spec", "type_alias")), None)
        name = spec.child_by_field_name("name") if spec is not None else None
    return data[name.start_byte:name.end_byte].decode("utf-8", "replace") if name is not None else ""


def _nest(units: list[Unit]) -> list[Unit]:
    """Units in file order with their nesting depth; a function directly inside a class is a method."""
    units.sort(key=lambda u: (u.start, -u.end))
    out: list[Unit] = []
    stack: list[Unit] = []
    for u in units:
        while stack and stack[-1].end <= u.start:
            stack.pop()
        kind = "method" if u.kind == "function" and stack and stack[-1].kind == "class" else u.kind
        nested = Unit(kind, u.name, u.start, u.end, u.def_start, u.body_start, u.head_end, u.doc, len(stack))
        out.append(nested)
        stack.append(nested)
    return out


def parse_file(text: str, language: str, path: str = "", details: bool = True) -> ParsedFile:
    """A file's units from its syntax tree, or line windows when there is no clean tree.

    details=False skips doc comments and blocks (FIM material) when only unit spans are needed.
    """
    data = text.encode("utf-8", errors="replace")
    name = grammar_name(language, path)
    grammar = load_grammar(name) if name else None
    if grammar is None or grammar.units is None:
        return ParsedFile(language, data, line_windows(data))
    try:
        tree = grammar.parser.parse(data)
    except Exception:  # timeout or parser failure
        return ParsedFile(language, data, line_windows(data), parse_failed=True)
    root = tree.root_node
    errors = _error_starts(root) if root.has_error else []

    comments: list[tuple[int, int, int, int]] = []
    if details and grammar.comments is not None:
        for c, _ in grammar.comments.captures(root):
            end_row = c.end_point[0] - (1 if c.end_point[1] == 0 else 0)  # Rust line comments end on the next row
            comments.append((c.start_point[0], end_row, c.start_byte, c.end_byte))
    by_end_row = _comment_lines(comments, data)

    units: list[Unit] = []
    seen: set[tuple[int, int]] = set()
    for node, capture in grammar.units.captures(root):
        if errors and (node.has_error or _in_error(node)):
            continue  # a tree with errors: only the units that parsed cleanly
        outer = node
        while outer.parent is not None and outer.parent.type in _WRAPPERS:
            if outer.parent.type in ("lexical_declaration", "variable_declaration") and len(outer.parent.named_children) > 1:
                break  # `const a = () => 1, b = 2`: keep the declarator alone
            outer = outer.parent
        start, def_start = outer.start_byte, outer.start_byte
        row = outer.start_point[0]
        sib = outer.prev_named_sibling
        while sib is not None and sib.type == "attribute_item" and sib.end_point[0] >= row - 1:
            start = def_start = sib.start_byte
            row = sib.start_point[0]
            sib = sib.prev_named_sibling
        doc_parts = []
        while row - 1 in by_end_row:  # contiguous comment lines right above the definition
            srow, sb, eb = by_end_row[row - 1]
            doc_parts.append(data[sb:eb].decode("utf-8", "replace"))
            start = sb
            row = srow
        doc = _clean_comment("\n".join(reversed(doc_parts)))
        head_end = -1
        if language == "python":
            docstring, head_end = _docstring(node, data)
            doc = docstring or doc
        key = (start, outer.end_byte)
        if key in seen:
            continue
        seen.add(key)
        body = _body_of(node)
        if body is None and node.type == "variable_declarator":
            value = node.child_by_field_name("value")
            body = value.child_by_field_name("body") if value is not None else None
        units.append(Unit(
            kind=capture, name=_name_of(node, data), start=start, end=outer.end_byte, def_start=def_start,
            body_start=body.start_byte if body is not None else outer.end_byte,
            head_end=head_end if head_end > 0 else (body.start_byte if body is not None else outer.end_byte),
            doc=doc, depth=0,
        ))
    units = _nest(units)
    if errors:
        if not units:
            return ParsedFile(language, data, line_windows(data), parse_failed=True)
        units = _nest(units + _error_windows(data, units, errors))

    blocks = []
    if details and grammar.blocks is not None:
        for node, _ in grammar.blocks.captures(root):
            if errors and (node.has_error or _in_error(node)):
                continue
            stmts = tuple((c.start_byte, c.end_byte) for c in node.named_children
                          if c.type not in _COMMENT_TYPES and c.type != "lambda_parameters")
            if stmts:
                blocks.append((node.start_byte, node.end_byte, stmts))
        blocks.sort()
    return ParsedFile(language, data, units or line_windows(data), blocks, parse_failed=bool(errors), has_ast=True)


def _error_starts(root: object) -> list[int]:
    """Start bytes of the ERROR and MISSING nodes of a tree (descending only into subtrees that hold one)."""
    out, stack = [], [root]
    while stack:
        node = stack.pop()
        if node.type == "ERROR" or node.is_missing:
            out.append(node.start_byte)
            continue
        stack.extend(c for c in node.children if c.has_error or c.is_missing)
    return sorted(out)


def _in_error(node: object) -> bool:
    parent = node.parent
    while parent is not None:
        if parent.type == "ERROR":
            return True
        parent = parent.parent
    return False


def _error_windows(data: bytes, units: list[Unit], errors: list[int]) -> list[Unit]:
    """Line windows over the stretches between a partly parsed file's top-level units that hold a syntax error: the
    code the grammar could not read is still mined, as lines."""
    covered = sorted((u.start, u.end) for u in units if u.depth == 0)
    gaps, at = [], 0
    for s, e in covered:
        if s > at:
            gaps.append((at, s))
        at = max(at, e)
    gaps.append((at, len(data)))
    out = []
    for s, e in gaps:
        if any(s <= pos < e for pos in errors):
            s = data.rfind(b"\n", 0, s) + 1 if s else 0
            out.extend(Unit("window", "", s + w.start, s + w.end, s + w.start, s + w.start, s + w.start, "", 0)
                       for w in line_windows(data[s:e]))
    return out
