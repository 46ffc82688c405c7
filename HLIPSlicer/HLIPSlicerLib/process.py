"""Launch, follow and cancel the worker child process. No Qt here: callers drive `poll()` from their event loop.

Two launchers, the same handle:
- inside Slicer >= 5.12: `slicer.util.launchConsoleProcess(args, blocking=False, logCallback, completedCallback)`,
  which reads the output on a thread and calls back on the main thread from a QTimer;
- elsewhere (older Slicer, PythonSlicer batch runs, tests): `subprocess.Popen` + a reader thread + a queue that
  `WorkerHandle.poll()` drains on the caller's thread. A GUI calls `poll()` from a QTimer; blocking callers use
  `wait()`.

The interpreter is PythonSlicer inside Slicer (`python_executable()`); tests pass `sys.executable` (the venv's
python) so they run the real worker script in a real child process.
"""
import inspect
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional

from . import WORKER_SCRIPT, core_parent_dir

EXIT_MESSAGES = {  # worker exit code -> what the user should do (the worker's HLIP_ERROR line says what happened)
    2: "the job file could not be read (a module bug: please report it)",
    3: "check the study: the scans could not be used",
    4: "check the model file and the prompt set",
    5: "not enough memory: choose the CPU, bf16 precision or fewer slices, or close other programs",
    6: "install the PyTorch extension (Extension Manager) and restart Slicer",
}


def python_executable() -> str:
    """PythonSlicer inside Slicer (same site-packages as the application), else this interpreter."""
    override = os.environ.get("HLIP_WORKER_PYTHON")
    if override:
        return override
    try:
        import slicer
        app = getattr(slicer, "app", None)
    except ImportError:
        app = None
    if app is not None:
        found = shutil.which("PythonSlicer")
        if found:
            return found
        exe = "PythonSlicer.exe" if os.name == "nt" else "PythonSlicer"
        for folder in (app.applicationDirPath(), os.path.join(app.slicerHome, "bin")):
            candidate = os.path.join(folder, exe)
            if os.path.isfile(candidate):
                return candidate
    return sys.executable


@dataclass
class ProgressLine:
    fraction: float
    stage: str


def parse_line(line: str):
    """('progress', ProgressLine) | ('result', path) | ('error', message) | ('log', line)."""
    kind, _, rest = line.strip().partition(" ")
    if kind == "HLIP_PROGRESS":
        value, _, stage = rest.partition(" ")
        try:
            return "progress", ProgressLine(float(value), stage)
        except ValueError:
            return "log", line
    if kind == "HLIP_RESULT":
        return "result", rest
    if kind == "HLIP_ERROR":
        return "error", rest
    return "log", line


def write_job(path: Path, source, out_dir: Path, options: dict, name: Optional[str] = None,
              write_scans: bool = False) -> Path:
    job = {"version": 1, "source": source, "out_dir": str(out_dir), "core_dir": str(core_parent_dir()),
           "options": options, "name": name, "write_scans": write_scans}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(job, indent=2))
    return path


def _slicer_async_launcher():
    """slicer.util.launchConsoleProcess when it supports blocking=False and a Slicer application runs."""
    try:
        import slicer
        if getattr(slicer, "app", None) is None:
            return None
        launch = slicer.util.launchConsoleProcess
        if "blocking" not in inspect.signature(launch).parameters:
            return None
        return launch
    except (ImportError, AttributeError, ValueError, TypeError):
        return None


@dataclass
class WorkerHandle:
    """A running worker. Callbacks run on the thread that calls `poll()` (or Slicer's main thread)."""
    args: List[str]
    on_line: Callable[[str], None] = lambda line: None
    on_done: Callable[[int], None] = lambda code: None
    proc: Optional[subprocess.Popen] = None
    returncode: Optional[int] = None
    cancelled: bool = False
    _queue: "queue.Queue" = field(default_factory=queue.Queue)
    _manual: bool = True

    @property
    def needs_polling(self) -> bool:
        """True when output arrives only through `poll()` (not Slicer's own launcher)."""
        return self._manual

    @property
    def running(self) -> bool:
        return self.returncode is None

    def start(self, env: Optional[dict] = None, use_slicer: bool = True) -> "WorkerHandle":
        launch = _slicer_async_launcher() if use_slicer else None
        if launch is not None:
            import slicer
            self._manual = False
            self.proc = launch(self.args, useStartupEnvironment=False,
                               updateEnvironment={**os.environ, **(env or {})}, blocking=False,
                               logCallback=self.on_line, completedCallback=self._finished)
            return self
        popen_env = {**os.environ, **(env or {})}
        popen_env.setdefault("PYTHONUNBUFFERED", "1")
        kwargs = {"start_new_session": True} if os.name != "nt" else \
            {"creationflags": getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0) | 0x08000000}  # no console window
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     encoding="utf-8", errors="replace", env=popen_env, bufsize=1, **kwargs)
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self):
        for line in self.proc.stdout:
            self._queue.put(("line", line.rstrip("\r\n")))
        self.proc.wait()
        self._queue.put(("done", self.proc.returncode))

    def _finished(self, code: int):
        if self.returncode is None:
            self.returncode = code
            self.on_done(code)

    def poll(self) -> bool:
        """Deliver pending output and the exit; True while the worker runs."""
        if self._manual:
            while True:
                try:
                    kind, data = self._queue.get_nowait()
                except queue.Empty:
                    break
                if kind == "line":
                    self.on_line(data)
                else:
                    self._finished(data)
        return self.running

    def wait(self, timeout: Optional[float] = None, interval: float = 0.05, process_events=None) -> int:
        """Poll until the worker ends (`process_events` e.g. slicer.app.processEvents keeps a GUI alive)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll():
            if process_events:
                process_events()
            if deadline is not None and time.monotonic() > deadline:
                self.cancel()
                raise TimeoutError(f"worker still running after {timeout} s; cancelled")
            time.sleep(interval)
        return self.returncode

    def cancel(self) -> None:
        """Kill the worker and its children. The exit is still reported through `on_done` (negative code)."""
        self.cancelled = True
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        try:
            if os.name != "nt" and self._manual:
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: the whole tree
            elif os.name == "nt":
                subprocess.run(["taskkill", "/F", "/T", "/PID", str(proc.pid)], capture_output=True)
            else:
                proc.kill()
        except (ProcessLookupError, PermissionError, OSError):
            proc.kill()


def launch_worker(job_file: Path, on_line=None, on_done=None, python: Optional[str] = None,
                  env: Optional[dict] = None, use_slicer: bool = True) -> WorkerHandle:
    args = [python or python_executable(), str(WORKER_SCRIPT), str(job_file)]
    handle = WorkerHandle(args=args, on_line=on_line or (lambda line: None), on_done=on_done or (lambda code: None))
    return handle.start(env=env, use_slicer=use_slicer)
