"""Property-based: every invalid flag combination ends in one line and exit code 2, never a
traceback, and never creates the store."""
import string

from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trajgen.cli import main
from trajgen.spec import ALL_ARCHS, OPTIMIZERS

names = st.text(string.ascii_lowercase + "_-", min_size=1, max_size=8)
bad_archs = st.lists(names, min_size=1, max_size=3).filter(lambda xs: any(x not in ALL_ARCHS for x in xs))
bad_optims = st.lists(names, min_size=1, max_size=3).filter(lambda xs: any(x not in OPTIMIZERS for x in xs))
not_int = st.text(string.ascii_letters + ".,", min_size=1, max_size=5)

invalid = st.one_of(
    bad_archs.map(lambda xs: ["--archs", ",".join(xs)]),
    bad_optims.map(lambda xs: ["--optimizers", ",".join(xs)]),
    st.integers(max_value=0).map(lambda n: ["--runs", str(n)]),
    st.integers(max_value=0).map(lambda n: ["--steps", str(n)]),
    st.integers(max_value=0).map(lambda n: ["--every", str(n)]),
    st.integers(max_value=-1).map(lambda n: ["--workers", str(n)]),
    st.integers(max_value=-1).map(lambda n: ["--coords", str(n)]),
    st.floats(max_value=0.0, allow_nan=False).map(lambda x: ["--width-mult", repr(x)]),
    st.integers(min_value=2, max_value=10**6).map(lambda n: ["--steps", "1", "--every", str(n)]),
    not_int.map(lambda s: ["--seed", s]),
    names.map(lambda s: ["--dataset", s + "x"]),
    names.map(lambda s: ["--data-root", f"/nonexistent/{s}"]),
)
valid_extra = st.lists(st.sampled_from([["--quiet"], ["--seed", "3"], ["--archs", "mlp"], ["--runs", "2"]]),
                       max_size=2)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bad=invalid, extra=valid_extra)
def test_invalid_collect_flags_are_one_line_exit_2(tmp_path, bad, extra):
    store = tmp_path / "never.zarr"
    args = ["collect", "--store", str(store), "--workers", "0"] + [a for e in extra for a in e] + bad
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, (args, result.output)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), (args, result.output)
    assert "Traceback" not in result.output
    assert not store.exists()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.text(string.ascii_letters + string.digits + "._-", min_size=1, max_size=12))
def test_info_and_verify_on_anything_but_a_store(tmp_path, name):
    target = tmp_path / name
    for command in ("info", "verify"):
        result = CliRunner().invoke(main, [command, str(target)])
        assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
