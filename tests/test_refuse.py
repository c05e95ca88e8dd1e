"""Every graphrun command refuses a bad command line the same way: one line on stderr naming the command,
`error:` and the reason, and exit status 2, before any work starts."""

import pytest

from graphrun.cli import main

REFUSALS = [
    (["bench", "serve", "--concurrency", "0"], "graphrun bench serve: error: "),
    (["bench", "infer", "--concurrency", "0"], "graphrun bench infer: error: "),
    (["bench", "pipeline", "--small", "--steps", "0"], "graphrun bench pipeline: error: "),
    (["demo", "--calls", "0"], "graphrun demo: error: --calls must be >= 1, got 0"),
    (["serve", "--max-num-seqs", "0"], "graphrun serve: error: "),
    (["serve", "--mixed-prefill-tokens", "64", "--max-mixed-prefill-tokens", "8"], "graphrun serve: error: "),
]


@pytest.mark.parametrize(("argv", "line"), REFUSALS, ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_a_refused_command_line_says_why_in_one_line_and_exits_2(argv, line, capsys, tmp_path):
    assert main([*argv, *(["--out", str(tmp_path)] if argv[0] == "bench" else [])]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(line), err
