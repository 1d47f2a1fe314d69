"""The CLI: help that tells a newcomer everything, README coverage, and clear errors before any work."""

import os
import re
import subprocess
import sys

from conftest import write_corpus
from elmo_dist.cli import build_parser, main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = ["elmo", "embed", "evaluate", "export", "refresh", "search", "status", "train", "verify"]


def _subcommands():
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return action.choices


def test_every_command_has_help_and_is_in_the_readme():
    subs = _subcommands()
    assert sorted(subs) == sorted(COMMANDS)
    readme = open(os.path.join(ROOT, "README.md")).read()
    for name, sub in subs.items():
        assert f"elmo-dist {name}" in readme, f"README does not show `elmo-dist {name}`"
        text = sub.format_help()
        assert len(text) > 300 and "--" in text


def test_embed_flags_in_the_readme_exist():
    """Every flag the README's corpus-job section or an `elmo-dist embed` line shows is a real flag."""
    readme = open(os.path.join(ROOT, "README.md")).read()
    section = readme[readme.index("## The corpus job"):readme.index("## On a Ray cluster")]
    lines = [ln for ln in readme.splitlines() if "elmo-dist embed" in ln or "jobs/embed_corpus.py" in ln]
    flags = {a for a in _subcommands()["embed"]._option_string_actions if a.startswith("--")}
    mentioned = set(re.findall(r"(--[a-z][a-z-]+)", section + "\n".join(lines))) - {"--working-dir"}
    assert len(mentioned) > 10
    for flag in mentioned:
        assert flag in flags, f"README mentions {flag}, which `elmo-dist embed` does not have"


def test_module_help_runs():
    res = subprocess.run([sys.executable, "-m", "elmo_dist", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0 and "embed" in res.stdout and "search" in res.stdout


def test_missing_column_fails_before_any_work(tmp_path, capsys, tiny_dir):
    write_corpus(tmp_path / "in.parquet", [("a", "Some text.")])
    out = tmp_path / "out"
    code = main(["embed", str(tmp_path / "in.parquet"), "--output", str(out), "--model", tiny_dir,
                 "--text-column", "body"])
    assert code == 2
    err = capsys.readouterr().err
    assert "missing column 'body'" in err and "columns: id, text" in err
    assert not any(p.suffix == ".parquet" for p in out.rglob("*"))


def test_unwritable_output_and_missing_model(tmp_path, capsys, tiny_dir):
    write_corpus(tmp_path / "in.parquet", [("a", "Some text.")])
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o500)
    try:
        if os.access(ro, os.W_OK):  # running as root: permissions are not enforced
            blocker = tmp_path / "file"
            blocker.write_text("x")
            target = str(blocker / "out")  # a path under a regular file can never be created
        else:
            target = str(ro / "out")
        assert main(["embed", str(tmp_path / "in.parquet"), "--output", target, "--model", tiny_dir]) == 2
        assert "output is not writable" in capsys.readouterr().err
    finally:
        os.chmod(ro, 0o700)
    assert main(["embed", str(tmp_path / "in.parquet"), "--output", str(tmp_path / "o"),
                 "--model", str(tmp_path / "nomodel")]) == 2
    assert "no such options file" in capsys.readouterr().err


def test_unreachable_bucket_is_a_clear_error(tmp_path, capsys, monkeypatch, tiny_dir):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    code = main(["embed", "s3://no-such-bucket/corpus/", "--output", str(tmp_path / "o"), "--model", tiny_dir])
    assert code == 2
    assert "s3://no-such-bucket/corpus/: cannot" in capsys.readouterr().err


def test_bad_config_file_names_the_field(tmp_path, capsys):
    cfg = tmp_path / "job.yaml"
    cfg.write_text("embedding:\n  pooling: median\n")
    assert main(["embed", "x.parquet", "--output", str(tmp_path / "o"), "--config", str(cfg)]) == 2
    assert "embedding.pooling" in capsys.readouterr().err


def test_every_flag_the_readme_shows_exists_for_its_command():
    """README -> CLI: a `--flag` on a line that runs `elmo-dist <command>` is a flag of that command."""
    readme = open(os.path.join(ROOT, "README.md")).read()
    subs = _subcommands()
    checked = 0
    for line in readme.splitlines():
        for name, sub in subs.items():
            m = re.search(rf"elmo-dist {name}\b(.*)", line)
            if not m:
                continue
            flags = {a for a in sub._option_string_actions if a.startswith("--")}
            for flag in re.findall(r"(--[a-z][a-z-]+)", m.group(1).split("#")[0]):
                assert flag in flags, f"README shows `elmo-dist {name} ... {flag}`, which it does not have"
                checked += 1
    assert checked > 15


def test_cli_reference_is_current_and_complete():
    """CLI -> docs: docs/cli.md is the parser's own help for every command (so every flag of every
    command is documented); regenerate with `python -m elmo_dist.cli.reference > docs/cli.md`."""
    from elmo_dist.cli.reference import render

    text = render()
    assert open(os.path.join(ROOT, "docs", "cli.md")).read() == text
    for name, sub in _subcommands().items():
        assert f"## elmo-dist {name}" in text
        for flag in (a for a in sub._option_string_actions if a.startswith("--")):
            assert flag in text
