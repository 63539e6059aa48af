"""A scripted teacher that logs every call it answers (one line per call, appended) and can
be slowed down, so a test can kill a distill run mid-bootstrap and count re-calls."""

from __future__ import annotations

import os
import time

from recipes.demo.task import teacher


def counting_teacher(signature, inputs):
    delay = float(os.environ.get("APPRENTICE_TEST_TEACHER_DELAY", "0"))
    if delay:
        time.sleep(delay)
    step = "classify" if "category" in signature.output_fields else "extract"
    line = f"{step}\t{inputs['ticket']}\n".encode()
    fd = os.open(os.environ["APPRENTICE_TEST_CALL_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
    return teacher(signature, inputs)
