"""Which project files a `kedro run` calls: imported at interpreter start-up when this folder is
on PYTHONPATH (tests/test_dvc_repro.py), it records every file under ``AOT_TRACE_ROOT`` one of
whose functions runs, once per file and process, in ``AOT_TRACE_CALLS/<pid>.txt`` as
``<kedro arguments>\\t<file>\\t<function>``. Processes that a `kedro run` starts (the
ParallelRunner's, the trainers') inherit its arguments through ``AOT_TRACE_STAGE``; other
programs (DVC itself) are not traced.

Calls made while a module is being imported (a table built at import time) are not recorded:
they run whenever anything imports the module, not because a node uses it.
"""

import os
import sys

_dir = os.environ.get("AOT_TRACE_CALLS")
_root = os.environ.get("AOT_TRACE_ROOT", "")
_kedro = os.path.basename(sys.argv[0] if sys.argv else "") == "kedro"
if _dir and _root and (_kedro or "AOT_TRACE_STAGE" in os.environ):
    import threading

    if _kedro:
        os.environ["AOT_TRACE_STAGE"] = " ".join(sys.argv[1:])
    _stage = os.environ["AOT_TRACE_STAGE"]
    _done: set[str] = set()

    def _importing(frame) -> bool:  # noqa: ANN001
        # a module body under way other than the program's own (the bottom frame)
        while frame is not None:
            if frame.f_code.co_name == "<module>" and frame.f_back is not None:
                return True
            frame = frame.f_back
        return False

    def _trace(frame, event, arg):  # noqa: ANN001, ANN202, ARG001
        code = frame.f_code
        name = code.co_filename
        if code.co_flags & 1 and name not in _done:  # a function, not a module or class body
            if not name.startswith(_root):
                _done.add(name)
            elif not _importing(frame.f_back):
                _done.add(name)
                with open(os.path.join(_dir, f"{os.getpid()}.txt"), "a") as out:
                    out.write(f"{_stage}\t{name}\t{code.co_name}\n")
        return None

    sys.settrace(_trace)
    threading.settrace(_trace)
