#!/usr/bin/env python3
"""Checks that the Grafana dashboard and the Prometheus recording rules use only metric names
that the metrics-collector exposes.

    python3 scripts/check_dashboard.py --metrics-url http://127.0.0.1:9464/metrics
    python3 scripts/check_dashboard.py --metrics-file saved-exposition.txt
    python3 scripts/check_dashboard.py --self-test

Every PromQL expression of the dashboard (panel targets, also inside collapsed rows, and the
template variables' queries) and of the recording rules is tokenised; the identifiers that
name metrics (not functions, keywords, label names, durations, strings or numbers) are looked
up in the exposition's metric families (a histogram `x` exposes `x_bucket`, `x_sum` and
`x_count`). Names recorded by the rules themselves count as known. Each unknown name is
printed with the panel or rule that uses it, and the exit status is 1; otherwise a one-line
summary and exit status 0. Exit status 2: the exposition, the dashboard or the rules
could not be read.

A family appears in the exposition only once its service recorded a first value: start the
mesh and send it some traffic (Embed, Classify and Rank through the gateway) before checking.

Python 3.11 standard library only; the rules file is read by a small YAML reader for the
subset it uses (block mappings and sequences, one-line scalars, `|`/`>` block scalars).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DASHBOARD = ROOT / "deploy/observability/grafana/mesh-dashboard.json"
DEFAULT_RULES = ROOT / "deploy/observability/prometheus/recording-rules.yml"

# Words that are never metric names where they stand (binary operators, modifiers, grouping).
KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
    "and", "or", "unless", "offset", "atan2",
}
# Keywords followed by a parenthesised list of label names.
LABEL_LIST_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
# Number literals that look like identifiers.
NUMBER_WORDS = {"inf", "nan"}

IDENT_START = re.compile(r"[A-Za-z_:]")
IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
# Grafana variables: $name, ${name}, ${name:format}, [[name]].
GRAFANA_VARIABLE = re.compile(r"\$\{[^}]*\}|\$[A-Za-z_][A-Za-z0-9_]*|\[\[[^\]]*\]\]")


class PromQLError(ValueError):
    """An expression the tokenizer cannot read."""


@dataclass
class Token:
    kind: str  # ident, string, number, punct, op, variable
    text: str


def tokenize(expr: str) -> list[Token]:
    """Splits a PromQL expression into tokens; `[...]` ranges are kept whole as one token."""
    tokens: list[Token] = []
    i, n = 0, len(expr)
    while i < n:
        c = expr[i]
        if c.isspace():
            i += 1
        elif c == "#":  # comment to the end of the line
            while i < n and expr[i] != "\n":
                i += 1
        elif c in "\"'`":
            j = i + 1
            while j < n and expr[j] != c:
                j += 2 if expr[j] == "\\" and c != "`" else 1
            if j >= n:
                raise PromQLError(f"unterminated string at offset {i}")
            tokens.append(Token("string", expr[i : j + 1]))
            i = j + 1
        elif c == "$" or expr.startswith("[[", i):
            m = GRAFANA_VARIABLE.match(expr, i)
            if not m:
                raise PromQLError(f"stray '$' at offset {i}")
            tokens.append(Token("variable", m.group()))
            i = m.end()
        elif c == "[":  # range or subquery: durations, ':' and variables only
            j = expr.find("]", i)
            if j < 0:
                raise PromQLError(f"unterminated '[' at offset {i}")
            tokens.append(Token("range", expr[i : j + 1]))
            i = j + 1
        elif c.isdigit() or (c == "." and i + 1 < n and expr[i + 1].isdigit()):
            # Numbers (1, 0.5, 1e-3, 0x1f) and durations (5m, 1h30m).
            j = i + 1
            while j < n and (expr[j].isalnum() or expr[j] in "._"
                             or (expr[j] in "+-" and expr[j - 1] in "eE" and not expr[i:j].startswith("0x"))):
                j += 1
            tokens.append(Token("number", expr[i:j]))
            i = j
        elif IDENT_START.match(c):
            m = IDENT.match(expr, i)
            assert m
            word = m.group()
            kind = "number" if word.lower() in NUMBER_WORDS else "ident"
            tokens.append(Token(kind, word))
            i = m.end()
        elif c in "(){},@":
            tokens.append(Token("punct", c))
            i += 1
        else:
            for op in ("==", "!=", "=~", "!~", ">=", "<=", "=", ">", "<", "+", "-", "*", "/", "%", "^"):
                if expr.startswith(op, i):
                    tokens.append(Token("op", op))
                    i += len(op)
                    break
            else:
                raise PromQLError(f"unexpected character {c!r} at offset {i}")
    return tokens


def metric_names(expr: str) -> list[str]:
    """The metric names an expression reads, in order of first use."""
    tokens = tokenize(expr)
    names: list[str] = []
    i = 0
    brace_depth = 0
    while i < len(tokens):
        tok = tokens[i]
        nxt = tokens[i + 1] if i + 1 < len(tokens) else None
        if tok.kind == "punct" and tok.text == "{":
            brace_depth += 1
        elif tok.kind == "punct" and tok.text == "}":
            brace_depth = max(0, brace_depth - 1)
        elif tok.kind == "ident" and brace_depth > 0:
            # A label name inside a selector's matchers; {__name__="x"} names metric x.
            after = tokens[i + 2] if i + 2 < len(tokens) else None
            if tok.text == "__name__" and nxt and nxt.text == "=" and after and after.kind == "string":
                name = after.text[1:-1]
                if name not in names:
                    names.append(name)
        elif tok.kind == "ident" and tok.text.lower() in KEYWORDS:
            if tok.text.lower() in LABEL_LIST_KEYWORDS and nxt and nxt.text == "(":
                depth = 0
                while i + 1 < len(tokens):  # skip the label list
                    i += 1
                    if tokens[i].text == "(":
                        depth += 1
                    elif tokens[i].text == ")":
                        depth -= 1
                        if depth == 0:
                            break
        elif tok.kind == "ident" and nxt is not None and nxt.text == "(":
            pass  # a function or an aggregation: sum(...), rate(...), histogram_quantile(...)
        elif tok.kind == "ident" and nxt is not None and nxt.text.lower() in ("by", "without"):
            pass  # an aggregation with its grouping first: sum by (model) (...)
        elif tok.kind == "ident":
            if tok.text not in names:
                names.append(tok.text)
        i += 1
    return names


# ------------------------------------------------------------------------------ exposition


def exposed_names(text: str) -> set[str]:
    """Metric names a Prometheus text exposition offers, with a histogram's and a summary's
    series names, and a counter's `_total` spelling (OpenMetrics writes its TYPE without it)."""
    names: set[str] = set()
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            parts = line.split()
            if len(parts) >= 4 and parts[1] == "TYPE":
                name, kind = parts[2], parts[3]
                names.add(name)
                if kind in ("histogram", "gaugehistogram"):
                    names.update({f"{name}_bucket", f"{name}_sum", f"{name}_count"})
                elif kind == "summary":
                    names.update({f"{name}_sum", f"{name}_count"})
                elif kind == "counter" and not name.endswith("_total"):
                    names.add(f"{name}_total")
            continue
        m = IDENT.match(line)
        if m:
            names.add(m.group())
    return names


def read_exposition(url: str | None, path: str | None) -> str:
    if path:
        return Path(path).read_text(encoding="utf-8")
    assert url
    request = urllib.request.Request(url, headers={"Accept": "text/plain;version=0.0.4"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read().decode("utf-8")


# ------------------------------------------------------------------------------ dashboard


@dataclass
class Use:
    """One expression and where it is used."""

    where: str
    expr: str
    names: list[str] = field(default_factory=list)


def dashboard_expressions(dashboard: dict) -> list[Use]:
    uses: list[Use] = []

    def walk(panels: list[dict]) -> None:
        for panel in panels:
            title = panel.get("title") or f"panel {panel.get('id')}"
            for target in panel.get("targets") or []:
                expr = target.get("expr")
                if isinstance(expr, str) and expr.strip():
                    uses.append(Use(f'panel "{title}" (refId {target.get("refId", "?")})', expr))
            walk(panel.get("panels") or [])

    walk(dashboard.get("panels") or [])
    for var in (dashboard.get("templating") or {}).get("list") or []:
        if var.get("type") != "query":
            continue
        query = var.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        if not isinstance(query, str) or not query.strip():
            continue
        expr = variable_query_expression(query)
        if expr:
            uses.append(Use(f'variable "{var.get("name")}"', expr))
    return uses


def variable_query_expression(query: str) -> str | None:
    """The PromQL inside a Grafana Prometheus variable query, if it has one."""
    query = query.strip()
    m = re.fullmatch(r"label_values\((.*)\)", query, re.S)
    if m:
        inner = m.group(1)
        # label_values(label) reads no metric; label_values(selector, label) reads the selector.
        depth = 0
        for i, c in enumerate(inner):
            if c in "({[":
                depth += 1
            elif c in ")}]":
                depth -= 1
            elif c == "," and depth == 0:
                return inner[:i]
        return None
    m = re.fullmatch(r"query_result\((.*)\)", query, re.S)
    if m:
        return m.group(1)
    if re.fullmatch(r"(label_names|metrics)\(.*\)", query, re.S):
        return None
    return query


# ------------------------------------------------------------------------------ rules (YAML subset)


class YamlError(ValueError):
    """The rules file uses YAML outside the subset this reader knows."""


class MiniYaml:
    """Block mappings, block sequences, one-line plain or quoted scalars, `|`/`>` block
    scalars and comments. Flow collections, anchors and multi-line plain scalars are refused."""

    def __init__(self, text: str):
        self.lines = text.splitlines()
        self.pos = 0

    @staticmethod
    def indent(line: str) -> int:
        return len(line) - len(line.lstrip(" "))

    @staticmethod
    def strip_comment(text: str) -> str:
        quote = None
        for i, c in enumerate(text):
            if quote:
                if c == quote:
                    quote = None
            elif c in "\"'" and (i == 0 or text[i - 1] in " :-[{,"):
                quote = c
            elif c == "#" and (i == 0 or text[i - 1] in " \t"):
                return text[:i].rstrip()
        return text.rstrip()

    def skip_blank(self) -> None:
        while self.pos < len(self.lines):
            content = self.strip_comment(self.lines[self.pos]).strip()
            if content and content != "---":
                return
            self.pos += 1

    def current(self) -> tuple[int, str] | None:
        self.skip_blank()
        if self.pos >= len(self.lines):
            return None
        line = self.lines[self.pos]
        if "\t" in line[: self.indent(line) + 1]:
            raise YamlError(f"line {self.pos + 1}: tab in indentation")
        return self.indent(line), self.strip_comment(line).strip()

    def parse(self):
        cur = self.current()
        if cur is None:
            return None
        value = self.block(cur[0])
        if self.current() is not None:
            raise YamlError(f"line {self.pos + 1}: unexpected indentation")
        return value

    def block(self, indent: int):
        cur = self.current()
        assert cur is not None
        if cur[1] == "-" or cur[1].startswith("- "):
            return self.sequence(indent)
        return self.mapping(indent)

    def sequence(self, indent: int) -> list:
        items = []
        while (cur := self.current()) is not None and cur[0] == indent and (
            cur[1] == "-" or cur[1].startswith("- ")
        ):
            rest = cur[1][1:].lstrip()
            if not rest:
                self.pos += 1
                nxt = self.current()
                if nxt is None or nxt[0] <= indent:
                    items.append(None)
                else:
                    items.append(self.block(nxt[0]))
            elif self.key_of(rest) is not None:
                # "- key: value": a mapping whose first key sits on the dash's line.
                line = self.lines[self.pos]
                dash = line.index("-", indent)
                key_column = dash + 1 + (len(line) - dash - 1 - len(line[dash + 1 :].lstrip(" ")))
                self.lines[self.pos] = " " * key_column + line[key_column:]
                items.append(self.mapping(key_column))
            else:
                self.pos += 1
                items.append(self.scalar(rest))
                self.no_continuation(indent)
        return items

    @staticmethod
    def key_of(text: str) -> tuple[str, str] | None:
        if text[:1] in "\"'":
            end = text.find(text[0], 1)
            if end > 0 and text[end + 1 : end + 2] == ":" and text[end + 2 : end + 3] in ("", " "):
                return text[1:end], text[end + 2 :].strip()
            return None
        m = re.match(r"([^\s:#\[\]{},][^:#]*?)\s*:(?:\s+(.*)|$)", text)
        if not m:
            return None
        return m.group(1), (m.group(2) or "").strip()

    def mapping(self, indent: int) -> dict:
        result: dict = {}
        while (cur := self.current()) is not None and cur[0] == indent:
            if cur[1].startswith("- ") or cur[1] == "-":
                raise YamlError(f"line {self.pos + 1}: sequence item where a key was expected")
            kv = self.key_of(cur[1])
            if kv is None:
                raise YamlError(f"line {self.pos + 1}: expected 'key: value', got {cur[1]!r}")
            key, rest = kv
            line_no = self.pos + 1
            self.pos += 1
            if key in result:
                raise YamlError(f"line {line_no}: duplicate key {key!r}")
            if rest[:1] in ("|", ">"):
                result[key] = self.block_scalar(indent, rest, line_no)
            elif rest:
                result[key] = self.scalar(rest)
                self.no_continuation(indent)
            else:
                nxt = self.current()
                if nxt is not None and nxt[0] > indent:
                    result[key] = self.block(nxt[0])
                elif nxt is not None and nxt[0] == indent and (nxt[1].startswith("- ") or nxt[1] == "-"):
                    result[key] = self.sequence(indent)
                else:
                    result[key] = None
        if (cur := self.current()) is not None and cur[0] > indent:
            raise YamlError(f"line {self.pos + 1}: unexpected indentation")
        return result

    def no_continuation(self, indent: int) -> None:
        cur = self.current()
        if cur is not None and cur[0] > indent:
            raise YamlError(
                f"line {self.pos + 1}: multi-line plain or quoted scalars are not supported; use '|'"
            )

    def block_scalar(self, indent: int, header: str, line_no: int) -> str:
        m = re.fullmatch(r"([|>])([+-]?)", header.strip())
        if not m:
            raise YamlError(f"line {line_no}: unsupported block scalar header {header!r}")
        style, chomp = m.groups()
        body: list[str] = []
        block_indent = None
        while self.pos < len(self.lines):
            line = self.lines[self.pos]
            if line.strip() == "":
                body.append("")
                self.pos += 1
                continue
            ind = self.indent(line)
            if ind <= indent:
                break
            if block_indent is None:
                block_indent = ind
            if ind < block_indent:
                break
            body.append(line[block_indent:])
            self.pos += 1
        trailing = 0
        while body and body[-1] == "":
            body.pop()
            trailing += 1
        if style == "|":
            text = "\n".join(body)
        else:
            text = ""
            for j, line in enumerate(body):
                if j == 0:
                    text = line
                elif line == "" or line.startswith(" ") or body[j - 1].startswith(" "):
                    text += "\n" + line
                elif body[j - 1] == "":
                    text += line
                else:
                    text += " " + line
        if chomp == "-" or not body:
            return text
        if chomp == "+":
            return text + "\n" * (trailing + 1)
        return text + "\n"

    @staticmethod
    def scalar(text: str):
        if text[:1] in "[{&*!|>":
            raise YamlError(f"unsupported YAML value {text!r} (flow collection, anchor or tag)")
        if text.startswith('"'):
            if not text.endswith('"') or len(text) < 2:
                raise YamlError(f"unterminated string {text!r}")
            return json.loads(text)
        if text.startswith("'"):
            if not text.endswith("'") or len(text) < 2:
                raise YamlError(f"unterminated string {text!r}")
            return text[1:-1].replace("''", "'")
        if text in ("null", "~"):
            return None
        if text in ("true", "false"):
            return text == "true"
        if re.fullmatch(r"-?\d+", text):
            return int(text)
        if re.fullmatch(r"-?(\d+\.\d*|\.\d+|\d+)([eE][-+]?\d+)?", text):
            return float(text)
        return text


def load_yaml(text: str):
    return MiniYaml(text).parse()


def rule_expressions(rules_doc) -> tuple[list[Use], set[str]]:
    uses: list[Use] = []
    recorded: set[str] = set()
    if not isinstance(rules_doc, dict) or not isinstance(rules_doc.get("groups"), list):
        raise YamlError("a rules file has a top-level 'groups' list")
    for group in rules_doc["groups"]:
        for rule in group.get("rules") or []:
            expr = str(rule.get("expr", ""))
            if "record" in rule:
                recorded.add(str(rule["record"]))
                where = f'rule "{rule["record"]}" (group {group.get("name")})'
            else:
                where = f'alert "{rule.get("alert")}" (group {group.get("name")})'
            uses.append(Use(where, expr))
    return uses, recorded


# ------------------------------------------------------------------------------ main


def check(dashboard_path: Path | None, rules_path: Path | None, exposition: str) -> int:
    exposed = exposed_names(exposition)
    uses: list[Use] = []
    recorded: set[str] = set()
    if rules_path is not None:
        rule_uses, recorded = rule_expressions(load_yaml(rules_path.read_text(encoding="utf-8")))
        uses += rule_uses
    if dashboard_path is not None:
        uses += dashboard_expressions(json.loads(dashboard_path.read_text(encoding="utf-8")))
    known = exposed | recorded
    unknown = 0
    referenced: set[str] = set()
    for use in uses:
        try:
            use.names = metric_names(use.expr)
        except PromQLError as err:
            print(f"{use.where}: cannot read the expression ({err}): {use.expr}")
            unknown += 1
            continue
        for name in use.names:
            referenced.add(name)
            if name not in known:
                unknown += 1
                print(f"unknown metric {name} in {use.where}")
    if unknown:
        print(f"{unknown} problem(s) in {len(uses)} expressions; {len(exposed)} names exposed")
        return 1
    from_rules = len(referenced & recorded)
    print(
        f"ok: {len(uses)} expressions use {len(referenced)} metric names, all exposed"
        + (f" ({from_rules} of them recorded by the rules)" if from_rules else "")
    )
    return 0


def self_test() -> int:
    cases = {
        'sum by (model, model_version) (rate(gateway_requests_total{model=~"$model"}[$__rate_interval]))':
            ["gateway_requests_total"],
        "histogram_quantile(0.99, sum by (le, model) (rate(x_seconds_bucket[5m])))": ["x_seconds_bucket"],
        'sum(rate(a_total{status!="OK"}[1m])) / sum without (job) (rate(a_total[1m])) > bool 0.05':
            ["a_total"],
        "a offset 5m and on (model) group_left (provider) b_total or c unless d": ["a", "b_total", "c", "d"],
        "sum(rate(x[5m])) by (model) * 1e-3 + Inf - NaN": ["x"],
        "max_over_time(queue_depth[1h:1m]) @ end()": ["queue_depth"],
        'count_values("value", build_info{version="1.0"})': ["build_info"],
        "level:metric_name:rate5m{job='x'} # a comment naming not_a_metric": ["level:metric_name:rate5m"],
        "topk(${n}, foo) + [[legacy]] * bar": ["foo", "bar"],
        "vector(1) + 0x1f + .5 + 2e+3": [],
        '{__name__="up", job="x"} + BY_NAME_ONLY': ["up", "BY_NAME_ONLY"],
    }
    passed = failures = 0

    def expect(ok: bool, message: str) -> None:
        nonlocal passed, failures
        if ok:
            passed += 1
        else:
            failures += 1
            print(f"FAIL {message}")

    for expr, expected in cases.items():
        got = metric_names(expr)
        expect(got == expected, f"metric_names({expr!r}) = {got}, expected {expected}")
    for bad in ('foo{a="b', "rate(x[5m", "a ? b"):
        try:
            metric_names(bad)
            expect(False, f"{bad!r} should not tokenize")
        except PromQLError:
            expect(True, "")

    exposition = (
        "# HELP a_seconds d\n# TYPE a_seconds histogram\n"
        'a_seconds_bucket{le="+Inf"} 1\na_seconds_sum 1\na_seconds_count 1\n'
        "# TYPE b counter\nb_total 3\nuntyped_metric 1\n"
    )
    want = {"a_seconds", "a_seconds_bucket", "a_seconds_sum", "a_seconds_count", "b", "b_total", "untyped_metric"}
    got_names = exposed_names(exposition)
    expect(got_names == want, f"exposed_names = {sorted(got_names)}")

    doc = load_yaml(
        "# rules\ngroups:\n  - name: g\n    interval: 30s\n    rules:\n"
        "      - record: r:x:rate1m   # trailing comment\n"
        '        expr: sum(rate(x_total{a="#b"}[1m]))\n'
        "      - alert: Hot\n        expr: |\n          r:x:rate1m\n            > 2\n"
        "        for: 5m\n        labels:\n          severity: 'critical'\n"
        "        annotations:\n          summary: >-\n            folded\n            text\n"
    )
    expected_doc = {"groups": [{"name": "g", "interval": "30s", "rules": [
        {"record": "r:x:rate1m", "expr": 'sum(rate(x_total{a="#b"}[1m]))'},
        {"alert": "Hot", "expr": "r:x:rate1m\n  > 2\n", "for": "5m",
         "labels": {"severity": "critical"}, "annotations": {"summary": "folded text"}}]}]}
    expect(doc == expected_doc, f"load_yaml: {doc}")
    for bad in ("a: [1, 2]\n", "a: b\n  c\n", "a:\n\tb: 1\n"):
        try:
            load_yaml(bad)
            expect(False, f"load_yaml({bad!r}) should be refused")
        except YamlError:
            expect(True, "")

    dashboard = {"panels": [
        {"title": "row", "type": "row", "panels": [{"title": "inner", "targets": [{"refId": "A", "expr": "inner_metric"}]}]},
        {"title": "top", "targets": [{"refId": "A", "expr": "sum(top_metric)"}]}],
        "templating": {"list": [
            {"type": "query", "name": "m", "query": {"query": "label_values(var_metric{a=\"b\"}, model)"}},
            {"type": "query", "name": "l", "query": "label_values(model)"}]}}
    got = [(u.where, metric_names(u.expr)) for u in dashboard_expressions(dashboard)]
    expect(
        [names for _, names in got] == [["inner_metric"], ["top_metric"], ["var_metric"]],
        f"dashboard_expressions: {got}",
    )

    print(f"self-test: {passed} passed, {failures} failed")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--metrics-url", help="the collector's /metrics, e.g. http://127.0.0.1:9464/metrics")
    source.add_argument("--metrics-file", help="a saved Prometheus text exposition instead of --metrics-url")
    source.add_argument("--self-test", action="store_true", help="run the tokenizer and reader checks and exit")
    parser.add_argument("--dashboard", default=str(DEFAULT_DASHBOARD), help="Grafana dashboard JSON ('' to skip)")
    parser.add_argument("--rules", default=str(DEFAULT_RULES), help="Prometheus rules YAML ('' to skip)")
    args = parser.parse_args(argv)
    if args.self_test:
        return self_test()
    if not args.metrics_url and not args.metrics_file:
        parser.error("one of --metrics-url, --metrics-file or --self-test is required")
    try:
        exposition = read_exposition(args.metrics_url, args.metrics_file)
    except OSError as err:
        print(f"cannot read the exposition from {args.metrics_url or args.metrics_file}: {err}", file=sys.stderr)
        return 2
    try:
        return check(
            Path(args.dashboard) if args.dashboard else None,
            Path(args.rules) if args.rules else None,
            exposition,
        )
    except (OSError, json.JSONDecodeError, YamlError) as err:
        print(f"cannot read the dashboard or the rules: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
