"""Fill-in-the-middle evaluation cases whose middles are syntax-tree spans, and their metrics.

A case is a file cut in three: ``prefix + middle + suffix`` is a contiguous slice of the file (the
whole file unless the context was trimmed), and the model is asked for the middle with exactly the
prompt a deployed server sends for an editor completion (Continue, Tabby), Qwen2.5-Coder's
repository-level FIM format, PSM order::

    <|repo_name|>{repo}\\n<|file_sep|>{path}\\n<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>

The header is ``forge_assets.mining.fim.header`` and the order is the PSM layout that
``forge_assets.mining.fim.fim_sample`` trains on, so evaluation, training and serving agree. That is Forge's
canonical markup: cases built with a base's FIM scheme (``forge_assets.fim_tokens``) prompt with that base's own
tokens (StarCoder's ``<fim_prefix>``, CodeLlama's ``▁<PRE>``, ...), as training and the server write them.

Middles come in three kinds, chosen from the file's tree-sitter tree (the grammars and parser
loading of ``forge_assets.mining.units``):

- ``line``: one statement that fills its line alone (an expression, assignment, declaration,
  return, raise/throw...). The middle runs from the statement's first character to the end of its
  line, newline included; the line's indentation stays at the end of the prefix, as an editor has
  it when the cursor sits after the indentation (Tabby/Qwen line completion).
- ``block``: the body of a function, if/else, for or while (and the like), from the start of its
  first line (indentation included) to the end of its last line, newline included, when it is 1 to
  ``MAX_BLOCK_LINES`` lines and its statements start and end their lines (``{ x }`` on one line is
  not a block case). Python blocks must parse once dedented.
- ``arguments``: the inside of a call's parentheses, non-empty and on one line; the prefix ends
  with ``(`` and the suffix starts with ``)``.

Languages with AST middles: python, rust, javascript, typescript (tsx too), go, ruby, shell, swift, java,
kotlin, c, cpp, csharp, php and yaml, each through its own node-type table below, and each only when its
grammar loads (``units.ast_status()``). Shell and YAML have no ``arguments`` kind; in YAML a ``line`` is a
``key: value`` pair or a ``- item`` alone on its line and a ``block`` is the nested mapping or sequence under
a key (the lines below it).

A tree with syntax errors keeps the middles of what parsed cleanly, as ``units.parse_file`` keeps its
clean units: spans come only from nodes whose subtree holds no error (no ERROR or MISSING node) and that
sit under no ERROR node. A language without a grammar, a file that cannot be parsed, or a tree with
errors that leaves no such span falls back to ``line`` cases: each non-blank line with a letter or digit
on it, from its first non-blank character to its end.
"""

from __future__ import annotations

import ast
import random
import textwrap
import threading
from dataclasses import dataclass, field

from forge_assets.chat import FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX
from forge_assets.fim_tokens import ALL_MARKERS
from forge_assets.mining.fim import header, trim_context
from forge_assets.mining.units import grammar_name, load_grammar

CASE_KINDS = ("line", "block", "arguments")
MAX_BLOCK_LINES = 15


@dataclass(frozen=True)
class _Table:
    """Node types of one grammar that make the three kinds of middles."""

    line: frozenset[str]  # statements that may fill a line
    line_parents: frozenset[str]  # nodes whose children are statements
    bodies: frozenset[str]  # body nodes whose children are a block's statements
    body_parents: frozenset[str]  # headers (function, if, for, while...) whose body is a block case
    arguments: frozenset[str]  # argument lists, "(" ... ")"
    argument_parents: frozenset[str]  # calls those lists belong to


def _t(line, line_parents, bodies, body_parents, arguments, argument_parents) -> _Table:
    return _Table(*(frozenset(x.split()) for x in (line, line_parents, bodies, body_parents, arguments, argument_parents)))


_JS = _t(
    "expression_statement return_statement lexical_declaration variable_declaration throw_statement",
    "program statement_block switch_case switch_default",
    "statement_block",
    "function_declaration function_expression function arrow_function method_definition generator_function_declaration "
    "generator_function if_statement else_clause for_statement for_in_statement while_statement do_statement "
    "try_statement catch_clause finally_clause",
    "arguments", "call_expression new_expression",
)
_C = _t(
    "expression_statement declaration return_statement field_declaration",
    "translation_unit compound_statement case_statement field_declaration_list preproc_if preproc_ifdef preproc_else "
    "preproc_elif",
    "compound_statement",
    "function_definition if_statement else_clause for_statement while_statement do_statement",
    "argument_list", "call_expression",
)
_TABLES: dict[str, _Table] = {
    "python": _t(
        "expression_statement return_statement raise_statement assert_statement delete_statement",
        "module block",
        "block",
        "function_definition if_statement elif_clause else_clause for_statement while_statement with_statement "
        "try_statement except_clause finally_clause",
        "argument_list", "call",
    ),
    "rust": _t(
        "expression_statement let_declaration",
        "block source_file",
        "block",
        "function_item if_expression else_clause for_expression while_expression loop_expression closure_expression",
        "arguments token_tree", "call_expression macro_invocation",
    ),
    "javascript": _JS,
    "typescript": _JS,
    "tsx": _JS,
    "go": _t(
        "expression_statement assignment_statement short_var_declaration return_statement inc_statement dec_statement "
        "var_declaration send_statement go_statement defer_statement",
        "block source_file statement_list expression_case default_case",
        "block",
        "function_declaration method_declaration func_literal if_statement for_statement",
        "argument_list", "call_expression",
    ),
    "ruby": _t(
        "assignment operator_assignment call return",
        "program body_statement then else do block_body begin",
        "body_statement then else do block_body",
        "method singleton_method if unless elsif while until for do_block block",
        "argument_list", "call",
    ),
    "shell": _t(
        "command variable_assignment declaration_command",
        "program compound_statement do_group if_statement elif_clause else_clause",
        "compound_statement do_group",
        "function_definition for_statement c_style_for_statement while_statement",
        "", "",
    ),
    "swift": _t(
        "property_declaration assignment call_expression control_transfer_statement try_expression await_expression",
        "source_file statements class_body enum_class_body",
        "statements",
        "function_body computed_property computed_getter computed_setter willset_clause didset_clause lambda_literal "
        "if_statement guard_statement for_statement while_statement repeat_while_statement do_statement catch_block",
        "value_arguments", "call_suffix",
    ),
    "java": _t(
        "expression_statement local_variable_declaration return_statement throw_statement field_declaration "
        "assert_statement yield_statement",
        "block constructor_body switch_block_statement_group class_body",
        "block constructor_body",
        "method_declaration constructor_declaration lambda_expression if_statement for_statement enhanced_for_statement "
        "while_statement do_statement try_statement try_with_resources_statement catch_clause finally_clause "
        "synchronized_statement",
        "argument_list", "method_invocation object_creation_expression explicit_constructor_invocation",
    ),
    "kotlin": _t(
        "property_declaration assignment call_expression return_expression throw_expression unary_expression",
        "source_file block class_body lambda_literal",
        "block lambda_literal",
        "function_body anonymous_initializer secondary_constructor getter setter annotated_lambda if_expression "
        "for_statement while_statement do_while_statement try_expression catch_block finally_block when_entry",
        "value_arguments", "call_expression constructor_invocation",
    ),
    "c": _C,
    "cpp": _t(
        " ".join(sorted(_C.line | {"throw_statement"})),
        " ".join(sorted(_C.line_parents | {"declaration_list"})),
        "compound_statement",
        " ".join(sorted(_C.body_parents | {"for_range_loop", "try_statement", "catch_clause", "lambda_expression"})),
        "argument_list", "call_expression new_expression",
    ),
    "csharp": _t(
        "expression_statement local_declaration_statement return_statement throw_statement field_declaration",
        "block declaration_list global_statement switch_section",
        "block",
        "method_declaration constructor_declaration destructor_declaration local_function_statement accessor_declaration "
        "lambda_expression anonymous_method_expression if_statement for_statement foreach_statement while_statement "
        "do_statement try_statement catch_clause finally_clause using_statement lock_statement",
        "argument_list", "invocation_expression object_creation_expression",
    ),
    "php": _t(
        "expression_statement return_statement echo_statement property_declaration const_declaration",
        "program compound_statement declaration_list case_statement default_statement",
        "compound_statement",
        "function_definition method_declaration anonymous_function if_statement else_if_clause else_clause for_statement "
        "foreach_statement while_statement do_statement try_statement catch_clause finally_clause",
        "arguments", "function_call_expression member_call_expression nullsafe_member_call_expression "
        "scoped_call_expression object_creation_expression",
    ),
    # YAML: a line is a `key: value` pair or a `- item` alone on its line; a block is the value of a pair that sits on
    # the lines under its key (the block_node holding a nested mapping or sequence); no calls.
    "yaml": _t(
        "block_mapping_pair block_sequence_item",
        "block_mapping block_sequence",
        "block_node",
        "block_mapping_pair",
        "", "",
    ),
}
_STRINGS = frozenset({"string", "string_literal", "concatenated_string", "template_string"})


def fim_prompt(repo: str, path: str, prefix: str, suffix: str, scheme=None) -> str:
    """The PSM prompt a deployed server sends for a completion: repo/file header, prefix, suffix, then the middle token;
    in Forge's canonical tokens, or in a base's own with its FIM `scheme` (``fim_tokens.FimScheme``)."""
    if scheme is not None and not scheme.canonical:
        return scheme.psm(prefix, suffix, repo, path)
    return f"{header(repo, path)}{FIM_PREFIX}{prefix}{FIM_SUFFIX}{suffix}{FIM_MIDDLE}"


@dataclass(frozen=True)
class FimCase:
    """One FIM evaluation case: the model sees prompt and should write middle."""

    repo: str
    path: str
    prefix: str
    middle: str
    suffix: str
    kind: str  # "line", "block" or "arguments"
    scheme: object = field(default=None, compare=False)  # the base's FIM scheme; None: Forge's canonical tokens

    @property
    def prompt(self) -> str:
        return fim_prompt(self.repo, self.path, self.prefix, self.suffix, self.scheme)


# ---------------------------------------------------------------- choosing middles (byte offsets)


def _line_end(data: bytes, pos: int) -> int | None:
    """The offset just past the newline ending pos's line (len(data) at the end of the file),
    or None when something other than blanks follows pos on its line."""
    nl = data.find(b"\n", pos)
    end = len(data) if nl < 0 else nl + 1
    return end if not data[pos:end].strip() else None


def _line_start(data: bytes, pos: int) -> int | None:
    """The start of pos's line, or None when something other than blanks precedes pos on it."""
    ls = data.rfind(b"\n", 0, pos) + 1
    return ls if not data[ls:pos].strip() else None


def _walk(root):
    stack = [root]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(reversed(node.named_children))


def _clean_nodes(root):
    """The nodes of a tree with errors whose subtree holds no error and that sit under no ERROR node: the walk does
    not enter ERROR nodes, and passes over (while still entering) the nodes holding an error or a MISSING node."""
    stack = [root]
    while stack:
        node = stack.pop()
        if node.type == "ERROR":
            continue
        if not node.has_error:
            yield node
        stack.extend(reversed(node.named_children))


def _ast_spans(data: bytes, root, table: _Table, python: bool) -> list[tuple[str, int, int]]:
    spans: list[tuple[str, int, int]] = []
    for node in (_clean_nodes(root) if root.has_error else _walk(root)):
        t, parent = node.type, node.parent
        ptype = parent.type if parent is not None else ""
        s, e = node.start_byte, node.end_byte
        if t in table.line and ptype in table.line_parents and node.start_point[0] == node.end_point[0]:
            lone_string = t == "expression_statement" and all(c.type in _STRINGS for c in node.named_children)
            end = _line_end(data, e)
            if not lone_string and end is not None and _line_start(data, s) is not None and data[s:e].strip():
                spans.append(("line", s, end))
        if t in table.bodies and ptype in table.body_parents and node.named_children:
            first, last = node.named_children[0], node.named_children[-1]
            start, end = _line_start(data, first.start_byte), _line_end(data, last.end_byte)
            if start is not None and end is not None and 0 < last.end_point[0] - first.start_point[0] + 1 <= MAX_BLOCK_LINES:
                if not python or _parses(data[start:end]):
                    spans.append(("block", start, end))
        if t in table.arguments and ptype in table.argument_parents and node.start_point[0] == node.end_point[0]:
            inner = data[s + 1:e - 1]
            if data[s:s + 1] == b"(" and data[e - 1:e] == b")" and inner.strip():
                spans.append(("arguments", s + 1, e - 1))
    return spans


def _parses(block: bytes) -> bool:
    """Whether a Python block reads as statements once dedented (a string at column 0 can stop that)."""
    try:
        ast.parse(textwrap.dedent(block.decode("utf-8", "surrogatepass")))
        return True
    except Exception:
        return False


def _plain_lines(data: bytes) -> list[tuple[str, int, int]]:
    """Line middles without a tree: each non-blank line with a letter or digit, from its first non-blank character."""
    spans, pos = [], 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        end = len(data) if nl < 0 else nl + 1
        line = data[pos:end]
        if any(chr(b).isalnum() or b >= 0x80 for b in line):
            spans.append(("line", pos + len(line) - len(line.lstrip()), end))
        pos = end
    return spans


_LOADED = threading.local()


def _grammar(name: str):
    """units.load_grammar(name), loaded once per thread: loading compiles the grammar's queries, which costs more than
    parsing a file (a tenth of a second for Swift), and a parser is not to be shared between threads."""
    loaded = _LOADED.__dict__.setdefault("grammars", {})
    if name not in loaded:
        loaded[name] = load_grammar(name)
    return loaded[name]


def _spans(source: str, language: str, path: str) -> tuple[bytes, list[tuple[str, int, int]]]:
    """A file's bytes and its candidate middles (kind, start byte, end byte), de-duplicated, in file order."""
    data = source.encode("utf-8", "surrogatepass")
    name = grammar_name(language, path)
    grammar = _grammar(name) if name and name in _TABLES else None
    spans = None
    if grammar is not None:
        try:
            root = grammar.parser.parse(data).root_node
            spans = _ast_spans(data, root, _TABLES[name], name == "python")
            if root.has_error and not spans:  # nothing parsed cleanly enough to make a case: plain lines
                spans = None
        except Exception:  # parser timeout or failure: plain lines
            spans = None
    if spans is None:
        spans = _plain_lines(data)
    return data, sorted(set(spans), key=lambda k: (k[1], k[2], k[0]))


def build_cases(files: list[tuple[str, str, str]], language: str, max_cases: int = 200, seed: int = 0,
                max_context_chars: int = 4000, scheme=None) -> list[FimCase]:
    """Up to max_cases FIM cases from (repo, path, source) files, every candidate when there are fewer; their prompts
    in the FIM `scheme` of the base they are for (default: Forge's canonical tokens).

    The choice is seeded and balanced: kinds take turns (line, block, arguments; a kind that runs out
    leaves its turns to the others), and within a kind the files take turns in a shuffled order, each
    file's candidates shuffled. Never raises on bad source: see the module docstring for fallbacks.
    Of more than max_cases files, a seeded sample of max_cases is parsed (each case could come from its own file):
    the cost follows max_cases, not the size of the split.
    """
    if len(files) > max_cases:
        files = [files[i] for i in sorted(random.Random(seed).sample(range(len(files)), max_cases))]
    rng = random.Random(seed)
    datas: list[bytes] = []
    per_kind: dict[str, list[list[tuple[int, int, int]]]] = {k: [] for k in CASE_KINDS}
    for fi, (_, path, source) in enumerate(files):
        data, spans = _spans(source, language, path)
        datas.append(data)
        for kind in CASE_KINDS:
            mine = [(fi, s, e) for k, s, e in spans if k == kind]
            if mine:
                rng.shuffle(mine)
                per_kind[kind].append(mine)
    queues: dict[str, list[tuple[int, int, int]]] = {}
    for kind in CASE_KINDS:
        groups = per_kind[kind]
        rng.shuffle(groups)
        depth = max((len(g) for g in groups), default=0)
        queues[kind] = [g[i] for i in range(depth) for g in groups if i < len(g)]
        queues[kind].reverse()  # pop() takes from the front of the round-robin order

    cases: list[FimCase] = []
    while len(cases) < max_cases and any(queues.values()):
        for kind in CASE_KINDS:
            if len(cases) >= max_cases or not queues[kind]:
                continue
            fi, s, e = queues[kind].pop()
            repo, path, _ = files[fi]
            data = datas[fi]
            try:
                prefix, middle, suffix = (data[a:b].decode("utf-8", "surrogatepass") for a, b in ((0, s), (s, e), (e, len(data))))
            except UnicodeDecodeError:  # a node boundary inside a character of invalid text
                continue
            prefix, suffix = trim_context(prefix, suffix, max_context_chars)
            cases.append(FimCase(repo, path, prefix, middle, suffix, kind, scheme))
    return cases


# ---------------------------------------------------------------- metrics


def truncate_middle(generated: str, case: FimCase) -> str:
    """A generated middle made comparable: cut at the first special token's text (<|endoftext|>, or
    <|file_sep|> and the like that a model writes when it runs on; any FIM family's, ``fim_tokens.ALL_MARKERS``),
    and for line and arguments cases keep only the first line (its newline included)."""
    cut = min((i for i in (generated.find(tok) for tok in ALL_MARKERS) if i >= 0), default=len(generated))
    generated = generated[:cut]
    if case.kind in ("line", "arguments"):
        nl = generated.find("\n")
        if nl >= 0:
            generated = generated[: nl + 1]
    return generated


def exact_match(pred: str, ref: str) -> bool:
    """Whether pred equals ref once trailing whitespace is stripped from both."""
    return pred.rstrip() == ref.rstrip()


def _levenshtein(a: str, b: str) -> int:
    # rapidfuzz and python-Levenshtein are not installed here and difflib's ratio is not an edit
    # distance, so this is the classic two-row dynamic programme over characters, after dropping the
    # common prefix and suffix (near matches, the usual case, cost almost nothing).
    i = 0
    while i < len(a) and i < len(b) and a[i] == b[i]:
        i += 1
    a, b = a[i:], b[i:]
    j = 0
    while j < len(a) and j < len(b) and a[-1 - j] == b[-1 - j]:
        j += 1
    if j:
        a, b = a[:-j], b[:-j]
    if len(a) < len(b):
        a, b = b, a
    if not b:
        return len(a)
    prev = list(range(len(b) + 1))
    for x, ca in enumerate(a, 1):
        cur = [x]
        for y, cb in enumerate(b, 1):
            cur.append(min(prev[y] + 1, cur[y - 1] + 1, prev[y - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def edit_similarity(pred: str, ref: str) -> float:
    """1 - Levenshtein distance / length of the longer string, over characters, trailing whitespace
    stripped from both (as exact_match does); 1.0 when both are empty. In [0, 1]."""
    pred, ref = pred.rstrip(), ref.rstrip()
    longest = max(len(pred), len(ref))
    return 1.0 if longest == 0 else 1.0 - _levenshtein(pred, ref) / longest


def _scores(pairs: list[tuple[str, FimCase]]) -> dict:
    n = len(pairs)
    if not n:
        return {"cases": 0, "exact_match": None, "edit_similarity": None}
    return {
        "cases": n,
        "exact_match": sum(exact_match(p, c.middle) for p, c in pairs) / n,
        "edit_similarity": sum(edit_similarity(p, c.middle) for p, c in pairs) / n,
    }


def summarize(preds: list[str], cases: list[FimCase]) -> dict:
    """Mean exact match and edit similarity of preds (already post-processed, e.g. by truncate_middle)
    against the cases' middles: overall, and under "by_kind" for each of CASE_KINDS (None when a kind has no case)."""
    if len(preds) != len(cases):
        raise ValueError(f"summarize: {len(preds)} predictions for {len(cases)} cases; they must pair one to one.")
    pairs = list(zip(preds, cases))
    out = _scores(pairs)
    out["by_kind"] = {kind: _scores([(p, c) for p, c in pairs if c.kind == kind]) for kind in CASE_KINDS}
    return out
