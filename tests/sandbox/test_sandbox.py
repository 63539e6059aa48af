"""Adversarial tests: every attack a model-written program could try is contained, and the
result names the limit that stopped it. Each test runs on both backends (bubblewrap and
the hand-built namespaces; the ``box`` fixture in conftest.py); a backend this machine
cannot run is skipped, never passed. The kernel surface (namespaces, capabilities, the
command line) is tested in test_kernel_surface.py.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from apprentice.sandbox import (
    LIMITS,
    Sandbox,
    SandboxLimits,
    SandboxUnavailableError,
)
from apprentice.sandbox import sandbox as sandbox_module

REPO_FILE = Path(__file__).resolve()


def with_limits(box: Sandbox, **limits) -> Sandbox:
    return Sandbox(replace(box.limits, **limits), backend=box.backend)


def test_a_plain_program_runs_and_its_output_comes_back(box):
    result = box.run("import math\nprint(sum(range(10)), math.sqrt(16))")
    assert result.ok, result.error_message()
    assert result.stdout == "45 4.0\n" and result.limit is None


def test_a_bug_is_reported_with_the_programs_own_traceback(box):
    result = box.run("x = 1\ny = x / 0\n")
    assert not result.ok and result.limit is None
    assert "ZeroDivisionError" in result.stderr and "y = x / 0" in result.stderr
    assert "_main" not in result.stderr  # the sandbox's own frames are not shown
    assert "ZeroDivisionError" in result.error_message()


def test_runs_as_an_unprivileged_user_in_an_empty_world(box):
    result = box.run(
        "import os; print(os.getuid(), os.getgid(), os.getgroups(), os.getcwd());"
        "print(sorted(os.listdir('/')))"
    )
    uid_line, listing = result.stdout.splitlines()
    if os.geteuid() == 0:  # root is not held to RLIMIT_NPROC, so the box never runs as root
        assert uid_line == "65534 65534 [] /tmp"
    assert not {"etc", "home", "work", "proc", "sys", "var", "mnt", "opt"} & set(eval(listing))


# -- time --------------------------------------------------------------------------------------
def test_an_infinite_loop_is_stopped_by_the_cpu_limit(box):
    result = box.run("while True:\n    pass\n")
    assert result.limit == "cpu_time", result
    assert "CPU" in result.error_message()


def test_a_sleeping_program_is_stopped_by_the_wall_clock_and_leaves_nothing_behind(box):
    marker = uuid.uuid4().hex
    result = with_limits(box, wall_s=2).run(f"import time  # {marker}\ntime.sleep(3600)")
    assert result.limit == "wall_time" and result.duration_s < 30
    survivors = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker in Path(f"/proc/{pid}/cmdline").read_text(errors="replace"):
                survivors.append(pid)
        except OSError:
            continue
    assert survivors == []


# -- processes -----------------------------------------------------------------------------------
def test_a_fork_bomb_cannot_fork_even_once(box):
    result = box.run("import os\nwhile True:\n    os.fork()\n")
    assert result.limit == "processes", result
    assert "BlockingIOError" in result.stderr


def test_a_subprocess_is_refused(box):
    result = box.run("import subprocess\nsubprocess.run(['/bin/sh', '-c', 'echo pwned'])")
    assert result.limit == "processes", result
    assert "pwned" not in result.stdout


def test_a_thread_is_refused(box):
    result = box.run("import threading\nthreading.Thread(target=print).start()")
    assert result.limit == "processes", result


def test_the_limits_cannot_be_raised_from_inside(box):
    result = box.run(
        "import resource\nresource.setrlimit(resource.RLIMIT_NPROC, (1000, 1000))\nprint('raised')"
    )
    assert not result.ok and "raised" not in result.stdout
    assert "not allowed to raise maximum limit" in result.stderr


# -- files -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "path", ["/etc/passwd", "/etc/shadow", "/root/.bashrc", "/proc/self/environ", str(REPO_FILE)]
)
def test_files_outside_the_box_cannot_be_read(box, path):
    result = box.run(f"print(open({path!r}).read()[:100])")
    assert result.limit == "filesystem", result
    assert result.stdout == ""


def test_the_host_temp_folder_and_home_are_not_there(box, tmp_path):
    (tmp_path / "secret.txt").write_text("s3cret")
    code = f"import os\nprint(os.path.exists({str(tmp_path)!r}), os.path.exists('/root/.profile'))"
    assert box.run(code).stdout == "False False\n"


@pytest.mark.parametrize("target", ["/usr/pwned", "/pwned", "HOST_TMP"])
def test_writes_outside_the_working_folder_fail(box, tmp_path, target):
    if target == "HOST_TMP":
        target = str(tmp_path / "pwned")
    result = box.run(f"open({target!r}, 'w').write('x')")
    assert result.limit == "filesystem", result
    assert not os.path.exists(target)


def test_the_devices_a_program_may_use_work(box):
    code = "open('/dev/null', 'w').write('x')\nprint(len(open('/dev/urandom', 'rb').read(8)))"
    assert box.run(code).stdout == "8\n"


def test_the_interpreter_uses_its_own_standard_library(box):
    import sys

    result = box.run("import json, sys\nprint(sys.prefix, json.__file__.startswith(sys.prefix))")
    assert result.stdout.split() == [os.path.realpath(sys.base_prefix), "True"]


def test_the_working_folder_is_writable_and_fresh_every_run(box):
    first = box.run("import os\nopen('note.txt', 'w').write('hi')\nprint(os.listdir('.'))")
    assert first.stdout == "['note.txt']\n"
    assert box.run("import os\nprint(os.listdir('/tmp'))").stdout == "[]\n"


def test_filling_the_working_folder_is_stopped_by_the_disk_limit(box):
    result = with_limits(box, disk_bytes=2**20).run(
        "f = open('big', 'wb')\nfor _ in range(100):\n    f.write(b'x' * 2**20)\n    f.flush()"
    )
    assert result.limit == "disk", result


# -- network -------------------------------------------------------------------------------------
def test_a_socket_to_a_host_service_on_localhost_never_arrives(box):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(0.5)
        port = server.getsockname()[1]
        result = box.run(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), 5)")
        assert result.limit == "network", result
        with pytest.raises(TimeoutError):
            server.accept()


@pytest.mark.parametrize(
    "code",
    [
        "import socket\nsocket.create_connection(('93.184.215.14', 80), 5)",
        "import socket\nsocket.getaddrinfo('example.com', 443)",
        "import urllib.request\nurllib.request.urlopen('http://1.1.1.1', timeout=5)",
    ],
    ids=["ip", "dns", "http"],
)
def test_external_addresses_are_unreachable(box, code):
    result = box.run(code)
    assert result.limit == "network" or "Network is unreachable" in result.stderr, result


# -- memory and output ------------------------------------------------------------------------
def test_a_4gb_allocation_is_stopped_by_the_memory_limit(box):
    result = box.run("x = bytearray(4 * 2**30)\nprint('allocated')")
    assert result.limit == "memory", result
    assert "allocated" not in result.stdout


def test_growing_memory_bit_by_bit_is_stopped_too(box):
    result = with_limits(box, memory_bytes=256 * 2**20).run(
        "chunks = []\nwhile True:\n    chunks.append(bytearray(2**20))"
    )
    assert result.limit == "memory", result


@pytest.mark.parametrize(
    "code", ["print('x' * 10**8)", "while True:\n    print('y' * 1000)"], ids=["one", "loop"]
)
def test_a_huge_print_is_cut_at_the_output_limit(box, code):
    result = with_limits(box, output_bytes=10_000).run(code)
    assert result.limit == "output", result
    assert len(result.stdout) <= 10_000


# -- environment -------------------------------------------------------------------------------
def test_the_parents_environment_does_not_leak(box, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-parent-secret")
    monkeypatch.setenv("PYTHONSTARTUP", "/etc/passwd")
    result = box.run("import os\nprint(dict(os.environ))")
    assert result.ok and "sk-parent-secret" not in result.stdout
    assert "OPENAI_API_KEY" not in result.stdout and "PYTHON" not in result.stdout


def test_concurrent_runs_do_not_disturb_each_other(box):
    results = [None] * 8

    def run(i):
        results[i] = box.run(f"print({i} * {i})")

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [r.stdout for r in results] == [f"{i * i}\n" for i in range(8)]


# -- refusing ------------------------------------------------------------------------------------
def test_no_backend_means_no_run_and_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setattr(sandbox_module.shutil, "which", lambda name: None)
    monkeypatch.setattr(sandbox_module.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(sandbox_module, "_RESOLVED", {})
    with pytest.raises(SandboxUnavailableError) as info:
        Sandbox().run("print('ran')")
    message = str(info.value)
    assert "bubblewrap (bwrap) is not installed" in message
    assert "needs root" in message and "apt-get install bubblewrap" in message


def test_auto_falls_back_to_the_backend_that_exists(monkeypatch):
    """bwrap hidden: as root, the hand-built namespaces run the code; otherwise a refusal."""
    real_which = sandbox_module.shutil.which
    monkeypatch.setattr(
        sandbox_module.shutil, "which", lambda name: None if name == "bwrap" else real_which(name)
    )
    monkeypatch.setattr(sandbox_module, "_RESOLVED", {})
    if os.geteuid() != 0:
        with pytest.raises(SandboxUnavailableError, match="bubblewrap"):
            Sandbox().run("print('ran')")
        return
    box = Sandbox()
    assert box.backend == "namespaces" and box.run("print('ran')").stdout == "ran\n"


@pytest.mark.skipif(not os.environ.get("CI"), reason="CI only: scripts/setup ran before it")
def test_on_ci_the_backends_setup_provides_are_all_there():
    """scripts/setup installs bubblewrap as root with apt-get, so on CI its tests never skip."""
    expected = ["bwrap", "namespaces"] if os.geteuid() == 0 else ["bwrap"]
    for backend in expected:
        assert Sandbox(backend=backend).backend == backend  # raises naming what is missing


def test_every_reported_limit_is_documented():
    from apprentice.sandbox.child import EXIT_LIMIT

    assert set(EXIT_LIMIT) | {"wall_time", "cpu_time", "output"} == set(LIMITS)


def test_oversized_programs_are_refused_before_running():
    with pytest.raises(ValueError, match="max_code_bytes"):
        Sandbox(SandboxLimits(max_code_bytes=10)).run("print('a long program')")
