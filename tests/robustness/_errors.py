"""Shared assertion of the hostile-input tests: a command failed with one line on stderr, no traceback."""


def one_line_error(capsys, *fragments):
    """The captured stderr is one line without a traceback and holds every fragment; returns it."""
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for f in fragments:
        assert f in err, (f, err)
    return err
