#!/usr/bin/env python3
"""The README and doc/*.md against what they promise: tables that render, links that
lead somewhere, and examples that print what they say they print.

- Tables: outside code blocks, every line that starts with `|` belongs to a table, and
  a table is a header row, a separator row (`|---|---:|`) and rows, all with the
  header's number of cells, with no blank line inside (a blank line ends a table, so
  rows after it would be a table without a header).
- Links: every relative link `[text](path#anchor)` names a file or folder that exists,
  and every `#anchor` a heading of the file it points into, by GitHub's rules (lower
  case, punctuation other than `-` and `_` dropped, spaces as `-`, a repeated heading
  suffixed `-1`, `-2`, ...).
- Runnable examples: a fenced block right after the line `<!-- runnable -->` runs
  against `./hermes` started on config.json; after `<!-- runnable with the config
  above -->`, on the last JSON block above it that has a "service_name". In the block,
  a line `$ COMMAND` is run with bash from the top of the repository, and the lines
  after it, up to the next `$ `, are exactly what it prints (stdout and stderr); it must
  exit 0. The ports 7789 and 8080 in a command are replaced by the ones the kernel gave
  this hermes, and back in what it prints, so the examples run beside anything else on
  the machine.

usage: docs.py PATH_TO_HERMES
Ends with the line "docs: N passed, N failed".
"""
import glob
import json
import os
import re
import subprocess
import sys

from blackbox import Hermes, ROOT, check_equal
from state import run_suite

DOCUMENTS = [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "doc", "*.md")))
RUNNABLE = re.compile(r"^<!-- runnable( with the config above)? -->$")
SEPARATOR_CELL = re.compile(r"^:?-+:?$")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
TESTS = []


def test(function):
    TESTS.append(function)
    return function


def relative(path):
    return os.path.relpath(path, ROOT)


def lines_outside_code(text):
    """(line number, line) of each line outside fenced code blocks."""
    fenced = False
    for number, line in enumerate(text.split("\n"), 1):
        if line.strip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            yield number, line


def cells(row):
    """The cells of a table row: split at each `|` not escaped with a backslash."""
    parts = re.split(r"(?<!\\)\|", row.strip())
    if parts and parts[0] == "":
        parts = parts[1:]
    if parts and parts[-1] == "":
        parts = parts[:-1]
    return [part.strip() for part in parts]


def table_problems(text, name):
    """Each problem of the tables in a markdown text, as 'NAME:LINE: what'."""
    problems = []
    blocks, current, last = [], [], None
    for number, line in lines_outside_code(text):
        if line.lstrip().startswith("|") and last == number - 1 and current:
            current.append((number, line))
        elif line.lstrip().startswith("|"):
            current = [(number, line)]
            blocks.append(current)
        else:
            current = []
        last = number
    for block in blocks:
        start = block[0][0]
        if len(block) < 2 or not all(SEPARATOR_CELL.match(cell) for cell in cells(block[1][1])):
            problems.append(f"{name}:{start}: a `|` row outside a table (no separator row under the header;"
                            " a blank line or text inside a table ends it)")
            continue
        width = len(cells(block[0][1]))
        for number, line in block[1:]:
            if len(cells(line)) != width:
                problems.append(f"{name}:{number}: {len(cells(line))} cells where the header has {width}")
    return problems


def github_anchor(heading):
    anchor = heading.strip().lower()
    anchor = re.sub(r"[^\w\- ]", "", anchor)
    return anchor.replace(" ", "-")


def anchors(path):
    seen, result = {}, set()
    with open(path) as file:
        text = file.read()
    for _, line in lines_outside_code(text):
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            anchor = github_anchor(match.group(1))
            count = seen.get(anchor, 0)
            seen[anchor] = count + 1
            result.add(anchor if count == 0 else f"{anchor}-{count}")
    return result


def link_problems(path):
    problems = []
    with open(path) as file:
        text = file.read()
    for number, line in lines_outside_code(text):
        for target in LINK.findall(re.sub(r"`[^`]*`", "", line)):
            if re.match(r"^[a-z]+:", target):
                continue  # http:, https:, mailto: lead outside the repository
            file_part, _, anchor = target.partition("#")
            destination = os.path.normpath(os.path.join(os.path.dirname(path), file_part)) if file_part else path
            where = f"{relative(path)}:{number}: {target}"
            if not os.path.exists(destination):
                problems.append(f"{where}: {relative(destination)} does not exist")
            elif anchor and (not destination.endswith(".md") or anchor not in anchors(destination)):
                problems.append(f"{where}: no heading in {relative(destination)} has the anchor #{anchor}")
    return problems


def runnable_examples(path):
    """Each runnable block: (line of its marker, config text, [(command, expected output)])."""
    with open(path) as file:
        lines = file.read().split("\n")
    examples, last_config = [], None
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.strip().startswith("```json"):
            end = lines.index("```", index + 1) if "```" in lines[index + 1:] else len(lines)
            block = "\n".join(lines[index + 1:end])
            try:
                if "service_name" in json.loads(block):
                    last_config = block
            except (ValueError, TypeError):
                pass  # a block of several JSON values, or a sample: not a config
        match = RUNNABLE.match(line.strip())
        if match:
            assert index + 1 < len(lines) and lines[index + 1].startswith("```"), \
                f"{relative(path)}:{index + 1}: a runnable marker not right before a code block"
            end = lines.index("```", index + 2)
            steps = []
            for text in lines[index + 2:end]:
                if text.startswith("$ "):
                    steps.append((text[2:], []))
                else:
                    assert steps, f"{relative(path)}:{index + 1}: output before the first `$ ` command"
                    steps[-1][1].append(text)
            if match.group(1):
                assert last_config, f"{relative(path)}:{index + 1}: no config block above the example"
                config = last_config
            else:
                with open(os.path.join(ROOT, "config.json")) as file:
                    config = file.read()
            examples.append((index + 1, config, steps))
            index = end
        index += 1
    return examples


def run_example(config, steps):
    hermes = Hermes(config=config)
    env = {key: value for key, value in os.environ.items() if "proxy" not in key.lower() and not key.startswith("HERMES_")}
    try:
        for command, expected in steps:
            command_here = command.replace("7789", str(hermes.udp_port)).replace("8080", str(hermes.http_port))
            result = subprocess.run(["bash", "-c", command_here], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, timeout=20)
            printed = result.stdout[:-1] if result.stdout.endswith("\n") else result.stdout
            printed = re.sub(rf"\b{hermes.udp_port}\b", "7789", re.sub(rf"\b{hermes.http_port}\b", "8080", printed))
            check_equal(printed.split("\n") if printed else [], expected, f"what `{command}` printed")
            check_equal(result.returncode, 0, f"the exit code of `{command}`")
    finally:
        hermes.close()


# ---- the checks check themselves: each finds what it is meant to find --------------------

@test
def the_table_check_finds_a_table_broken_by_a_blank_line_or_text():
    whole = "| a | b |\n|---|--:|\n| 1 | 2 |\n\n```\n| in code |\n```\n"
    check_equal(table_problems(whole, "x"), [], "a whole table")
    broken = "| a | b |\n|---|---|\n| 1 | 2 |\n\n| 3 | 4 |\n"
    check_equal(len(table_problems(broken, "x")), 1, "rows after a blank line")
    interrupted = "| a | b |\n|---|---|\ntext\n| 3 | 4 |\n"
    check_equal(len(table_problems(interrupted, "x")), 1, "rows after text")
    check_equal(len(table_problems("| a | b |\n|---|---|\n| 1 | 2 | 3 |\n", "x")), 1, "a row too wide")
    check_equal(table_problems("| a `x\\|y` | b |\n|---|---|\n| 1 | 2 |\n", "x"), [], "an escaped |")


@test
def anchors_follow_githubs_rules():
    check_equal([github_anchor(h) for h in ["State across restarts", "/metrics", "Hermes' own metrics",
                                           "StatsD and DogStatsD", "What the tests cover"]],
                ["state-across-restarts", "metrics", "hermes-own-metrics", "statsd-and-dogstatsd",
                 "what-the-tests-cover"])


# ---- the documents ---------------------------------------------------------------------

@test
def every_table_is_whole():
    problems = []
    for path in DOCUMENTS:
        with open(path) as file:
            problems += table_problems(file.read(), relative(path))
    check_equal(problems, [], "table problems")


@test
def every_relative_link_and_anchor_leads_somewhere():
    problems = []
    for path in DOCUMENTS:
        problems += link_problems(path)
    check_equal(problems, [], "broken links")


@test
def the_readme_marks_the_push_examples_check_config_and_the_statsd_one_liner_runnable():
    commands = [command for _, _, steps in runnable_examples(DOCUMENTS[0]) for command, _ in steps]
    for wanted in ["> /dev/udp/127.0.0.1/7789", "example/send_metric.py", "./hermes --check-config",
                   "| nc -u -q0 127.0.0.1 7789"]:
        assert any(wanted in command for command in commands), f"no runnable example runs {wanted!r}: {commands}"


def runnable_tests():
    """One test for each runnable example of each document."""
    tests = []
    for path in DOCUMENTS:
        for line, config, steps in runnable_examples(path):
            def example(config=config, steps=steps):
                run_example(config, steps)
            example.__name__ = f"the_example_at_{relative(path)}:{line}_prints_what_it_shows"
            tests.append(example)
    return tests


def main():
    try:
        tests = TESTS + runnable_tests()
    except AssertionError as error:
        def reading_the_runnable_examples():
            raise error
        tests = TESTS + [reading_the_runnable_examples]
    return run_suite("docs", tests)


if __name__ == "__main__":
    sys.exit(main())
