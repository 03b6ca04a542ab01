"""The README's command blocks marked ``<!-- readme-test: digits -->`` run as written (offline, on digits).

Each line runs in-process (``nasdistill.cli.main``) in a fresh folder, in order, with the smaller
training budgets of ``FASTER`` appended (the same flags the README documents, so a flag or path the
README names that the code refuses fails here); then the files and output the README promises are checked.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from nasdistill.cli import main

REPO = Path(__file__).resolve().parent.parent
MARK = "<!-- readme-test: digits -->"
SMALL_NET = ["--set", "batch_real=16", "--set", "net=D1-W32-relu-instancenorm-avgpool"]
TRAIN = ["--proxy-steps", "5", "--batch-size", "32", "--space", str(REPO / "examples" / "small_convnet.py")]
FULL = ["--full-epochs", "1", "--bootstrap", "20"]
#: per command (and method): flags appended to keep the test fast
FASTER = {
    "distill dm": SMALL_NET,
    "search": TRAIN,
    "validate": TRAIN + FULL,
    "run": ["--iterations", "4", *SMALL_NET, *TRAIN, *FULL, "--eval-seeds", "1"],
    "experts": ["--net", "D1-W32-relu-instancenorm-avgpool"],
}


def readme_commands() -> list[list[str]]:
    text = (REPO / "README.md").read_text()
    blocks = re.findall(re.escape(MARK) + r"\s*```bash\n(.*?)```", text, flags=re.S)
    assert blocks, f"no block marked {MARK} in README.md"
    lines = [ln.split("  #")[0].strip() for b in blocks for ln in b.splitlines()]
    return [shlex.split(ln) for ln in lines if ln]


def _extra(argv: list[str]) -> list[str]:
    cmd = argv[1]
    method = argv[argv.index("--method") + 1] if "--method" in argv else None
    return FASTER.get(f"{cmd} {method}", FASTER.get(cmd, [])) if cmd == "distill" else FASTER.get(cmd, [])


@pytest.mark.slow
def test_readme_command_block_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    outputs = {}
    for argv in readme_commands():
        assert argv[0] == "nasdistill", argv
        code = main(argv[1:] + _extra(argv))
        captured = capsys.readouterr()
        assert code == 0, (argv, captured.err[-2000:])
        outputs[" ".join(argv)] = captured
        if "--json" in argv:
            lines = captured.out.strip().splitlines()
            assert len(lines) == 1, (argv, captured.out[-2000:])  # stdout: one JSON object, nothing else
            outputs[" ".join(argv)] = json.loads(lines[0])
    runs = tmp_path / "runs"
    assert (runs / "dm2" / "proxy.safetensors").is_file() and (runs / "herding2" / "proxy.safetensors").is_file()
    herding = next(v for k, v in outputs.items() if "--method herding" in k)
    assert "note: --iterations does not apply to herding" in herding.out
    search = next(v for k, v in outputs.items() if k.startswith("nasdistill search"))
    assert search["trials"] == 2 and (runs / "dm2-search" / "best_arch.json").is_file()
    val = next(v for k, v in outputs.items() if k.startswith("nasdistill validate"))
    assert [c["kind"] for c in val["contenders"]] == ["proxy", "proxy"] and (runs / "dm2-val" / "report.html").is_file()
    summary = next(v for k, v in outputs.items() if k.startswith("nasdistill run"))
    assert summary["search"]["trials"] == 2 and summary["cost"]["proxy"]["speedup_wall"] > 0
    small = runs / "small"
    assert {"summary.json", "summary.md", "study.db", "validation.json", "report.html"} <= \
        {p.name for p in small.iterdir()}
    assert not (small / "quickstart").exists()  # --out is exactly the folder
    assert "speed-up per candidate" in (small / "summary.md").read_text()
    log = (runs / "small.log").read_text()
    assert "INFO nasdistill.cli" in log and "Spearman" in log
    info = json.loads((runs / "experts-info" / "experts.json").read_text())
    assert Path(info["dir"]).parent.resolve() == (runs / "experts").resolve()
    assert any(k.startswith("nasdistill list methods") and "herding" in v.out for k, v in outputs.items())


def test_readme_mtt_claim_matches_the_code(digits, tmp_path):
    """The README says: without stored experts, distill --method mtt stops with the command to run,
    and --set build_experts=true trains them itself."""
    import pytest

    from nasdistill.distill import distill
    from nasdistill.errors import ConfigError

    text = " ".join((REPO / "README.md").read_text().split())
    assert "`--set build_experts=true` makes it train them itself" in text
    with pytest.raises(ConfigError, match="nasdistill experts"):
        distill(digits, "mtt", ipc=1, store=False, experts_dir=str(tmp_path / "none"), iterations=1)
