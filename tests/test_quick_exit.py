"""A command ends with its own status once every atexit handler has run, without the interpreter's teardown;
one that ends in an uncaught exception keeps the teardown and its traceback."""

import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import atexit, sys
    from pathlib import Path
    from sweep.quick_exit import QuickExit

    out = Path(sys.argv[1])

    class FreedAtTeardown:
        def __del__(self):
            (out / "torn-down").write_text("")

    kept = FreedAtTeardown()  # a module global: freed only by the interpreter's teardown
    quick = QuickExit()
    atexit.register(lambda: (out / "handler-ran").write_text(""))  # registered later, so it runs first

    def command():
        print("last line", flush=False)  # still buffered when the command ends: must not be lost
        ending = sys.argv[2]
        if ending == "raise":
            raise RuntimeError("a bug")
        if ending != "return":
            sys.exit(int(ending) if ending.isdigit() else ending)

    quick.run(command)
""")


@pytest.mark.parametrize("ending, status", [("return", 0), ("2", 2), ("a message", 1)])
def test_a_command_that_ends_with_a_status_keeps_it_and_its_handlers_and_skips_the_teardown(tmp_path, ending,
                                                                                            status):
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), ending], capture_output=True, text=True)
    assert done.returncode == status, done.stderr
    assert done.stdout == "last line\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["handler-ran"]


def test_an_uncaught_exception_keeps_the_teardown_and_its_traceback(tmp_path):
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), "raise"], capture_output=True, text=True)
    assert done.returncode == 1 and "RuntimeError: a bug" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["handler-ran", "torn-down"]
