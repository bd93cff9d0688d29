"""Property-based: invalid flags of every invwnn command end in one line and exit code 2, never a
traceback, and write nothing."""
import string
import tempfile
from pathlib import Path

from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from invwnn.cli.main import main
from invwnn.rewind import USER_REWINDERS
from invwnn.unlearn.methods import REGISTRY
from trajgen.nets import KINDS

word = st.text(string.ascii_lowercase + "-_", min_size=1, max_size=10)
not_number = st.text(string.ascii_letters + ",;", min_size=1, max_size=6)

apply_bad = st.one_of(
    word.filter(lambda w: w not in REGISTRY).map(lambda w: ["--method", w]),
    word.filter(lambda w: w not in USER_REWINDERS).map(lambda w: ["--rewinder", w]),
    not_number.map(lambda s: ["--lr", s]),
    not_number.map(lambda s: ["--iterations", s]),
    not_number.map(lambda s: ["--seed", s]),
    st.sampled_from(["28", "x28", "28x", "axb", "1x2x3"]).map(lambda s: ["--size", s]),
    st.integers(max_value=0).map(lambda n: ["--channels", str(n)]),
)
train_bad = st.one_of(
    st.integers(max_value=1).map(lambda n: ["--window", str(n)]),
    st.integers(max_value=0).map(lambda n: ["--back", str(n)]),
    st.lists(word, min_size=1, max_size=3).filter(lambda ks: any(k not in KINDS for k in ks))
      .map(lambda ks: ["--kinds", ",".join(ks)]),
    word.filter(lambda w: w not in ("mlp", "cnn", "vit")).map(lambda w: ["--val-archs", w]),
    st.integers(max_value=0).map(lambda n: ["--steps", str(n)]),
    word.map(lambda w: ["--store", f"/nonexistent/{w}.zarr"]),
)


def one_line_exit_2(result, args):
    assert result.exit_code == 2, (args, result.output)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), (args, result.output)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bad=apply_bad, model_exists=st.booleans())
def test_invalid_apply_flags(bad, model_exists):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = folder / "m.pt"
        if model_exists:
            model.write_bytes(b"not a model")
        (folder / "forget").mkdir()
        args = ["apply", "--model", str(model), "--forget", str(folder / "forget"), "--quiet"] + bad
        one_line_exit_2(CliRunner().invoke(main, args), args)
        assert sorted(p.name for p in folder.iterdir()) == (["forget", "m.pt"] if model_exists else ["forget"])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bad=train_bad)
def test_invalid_train_flags(tmp_path, bad):
    out = tmp_path / "never.pt"
    args = ["train", "--store", str(tmp_path / "missing.zarr"), "--out", str(out), "--quiet"] + bad
    one_line_exit_2(CliRunner().invoke(main, args), args)
    assert not out.exists()


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.text(string.ascii_letters + string.digits + "._-", min_size=1, max_size=12))
def test_inspect_on_anything_but_a_checkpoint(tmp_path, name):
    target = tmp_path / name
    one_line_exit_2(CliRunner().invoke(main, ["inspect", str(target)]), name)
