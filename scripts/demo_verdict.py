"""The last line of `make demo`: did the unlearning do its job? Reads the apply report
(DIR/model.unlearned.json) and the audit report (DIR/model.unlearned.audit.json) and says, in one
line, whether the result stands where models never trained on the forget set stand (the audit's
references, trained on the retain set alone: Retrain's stand-ins):

- forgetting: forget accuracy moved 0.8 to 1.25 of the way from the original's to the references' mean;
- accuracy kept: test accuracy at most 1 point below the original's;
- the audit: no more trace than in the references (its verdict).

    .venv/bin/python scripts/demo_verdict.py data/demo
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def judge(applied: dict, audited: dict) -> tuple[bool, str]:
    """(done, the line) from the apply report ``applied`` and the audit report ``audited``."""
    before, after = applied["before"], applied["after"]
    f0, f1 = 100 - before["UA"], 100 - after["UA"]
    refs = audited["references"]
    f_ref = sum(r["forget_acc"] for r in refs) / len(refs)
    way = (f0 - f1) / (f0 - f_ref) if f0 != f_ref else float("nan")
    checks = {
        f"forget accuracy {f0:.1f} -> {f1:.1f}%, {way:.2f} of the way to the {len(refs)} references' {f_ref:.1f}%":
            0.8 <= way <= 1.25,
        f"test accuracy {before['TA']:.1f} -> {after['TA']:.1f}%": after["TA"] >= before["TA"] - 1.0,
        f"audit: {audited['decision']['kind'].replace('none', 'no more trace than the references')}":
            audited["decision"]["kind"] == "none"}
    missed = [text for text, ok in checks.items() if not ok]
    if not missed:
        return True, "demo: done, the model stands where one never trained on the forget set stands: " + "; ".join(checks)
    return False, "demo: fell short: " + "; ".join(missed) + " (met: " + ("; ".join(
        t for t, ok in checks.items() if ok) or "none") + ")"


def main() -> None:
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "data/demo")
    applied = json.loads((folder / "model.unlearned.json").read_text())
    audited = json.loads((folder / "model.unlearned.audit.json").read_text())
    print(judge(applied, audited)[1])


if __name__ == "__main__":
    main()
