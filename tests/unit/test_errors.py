"""Library messages name parameters; each client renders them (tuiwb.errors)."""

from tuiwb.errors import ParamError, render_for_cli, render_plain


def test_render_for_cli_turns_parameters_into_flags():
    msg = "`out` x exists: pass `resume=True` to continue, `overwrite=True` to replace, or use `depth=3`"
    assert render_for_cli(msg) == "--out x exists: pass --resume to continue, --overwrite to replace, or use --depth 3"
    assert render_for_cli("`logger` is bad", {"logger": "--log"}) == "--log is bad"
    assert render_for_cli("run `tuiwb trace --resume` again") == "run `tuiwb trace --resume` again"  # a command stays


def test_render_plain_keeps_python_spelling():
    assert render_plain("pass `resume=True` or lower `val_fraction`") == "pass resume=True or lower val_fraction"


def test_param_error_names_its_parameter():
    e = ParamError("seq_len", "must be at least 2")
    assert (e.param, e.problem, str(e)) == ("seq_len", "must be at least 2", "`seq_len` must be at least 2")
    assert render_for_cli(str(e)) == "--seq-len must be at least 2"
