"""A real Orthanc (Debian packages ``orthanc``, ``orthanc-dicomweb``) for the PACS tests, kept off the network.

Orthanc has no bind-address setting, so it runs in a private network namespace (``unshare -n``, only ``lo`` up)
with a config written here (``RemoteAccessAllowed: false``, a test user). ``inside(server)`` moves the calling
thread into that namespace (``setns``), so the test and the CLI it calls reach it on 127.0.0.1; nothing outside
can. The server is stopped by PID.
"""
from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

CLONE_NEWNET = 0x40000000
PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
USER, PASSWORD = "smaformer", "s3cret-test"
HTTP_PORT, DICOM_PORT = 8042, 4242


@dataclass
class Orthanc:
    proc: subprocess.Popen
    folder: Path
    log: object = None          # the open log file, closed by stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{HTTP_PORT}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    @property
    def dimse(self) -> str:
        return f"dimse://ORTHANC@127.0.0.1:{DICOM_PORT}"


def why_not() -> str | None:
    """Why Orthanc cannot run here (None when it can)."""
    if not shutil.which("Orthanc") or not PLUGIN.exists():
        return "Orthanc and its DICOMweb plugin are not installed (apt-get install orthanc orthanc-dicomweb)"
    if not shutil.which("unshare"):
        return "unshare (util-linux) is missing"
    return None


def start(folder: Path, lua: str = "", env: dict | None = None, **config) -> Orthanc:
    """Orthanc with its storage in ``folder``, in a new network namespace; ``lua``: a script it runs; ``env``:
    its environment (default: this process's); ``config``: more orthanc.json entries."""
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"Name": "smaformer-test", "StorageDirectory": str(folder / "db"), "IndexDirectory": str(folder / "db"),
           "Plugins": [str(PLUGIN)], "HttpPort": HTTP_PORT, "DicomPort": DICOM_PORT, "DicomAet": "ORTHANC",
           "RemoteAccessAllowed": False, "AuthenticationEnabled": True, "RegisteredUsers": {USER: PASSWORD},
           "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}, "HttpCompressionEnabled": False,
           "DicomModalities": {"smaformer": {"AET": "SMAFORMER", "Host": "127.0.0.1", "Port": 11112,
                                             "AllowFind": True, "AllowGet": True, "AllowStore": True}},
           "LuaScripts": []}
    if lua:
        (folder / "filter.lua").write_text(lua, encoding="utf-8")
        cfg["LuaScripts"] = [str(folder / "filter.lua")]
    cfg.update(config)
    (folder / "orthanc.json").write_text(json.dumps(cfg), encoding="utf-8")
    log = open(folder / "orthanc.log", "w")   # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(["unshare", "-n", "sh", "-c", f"ip link set lo up; exec Orthanc {folder / 'orthanc.json'}"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    server = Orthanc(proc, folder, log)
    deadline = time.time() + 30
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"Orthanc exited ({proc.returncode}): {(folder / 'orthanc.log').read_text()[-500:]}")
        try:
            with inside(server):
                import requests
                if requests.get(f"{server.url}/system", auth=(USER, PASSWORD), timeout=1).ok:
                    return server
        except OSError:
            pass
        time.sleep(0.3)
    stop(server)
    raise RuntimeError("Orthanc did not answer in 30 s")


def stop(server: Orthanc) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.proc.pid, signal.SIGTERM)
    try:
        server.proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(server.proc.pid, signal.SIGKILL)
        server.proc.wait()
    if server.log is not None:
        server.log.close()


@contextlib.contextmanager
def inside(server: Orthanc):
    """Run the block (this thread) in the server's network namespace."""
    libc = ctypes.CDLL(None, use_errno=True)
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    theirs = os.open(f"/proc/{server.proc.pid}/ns/net", os.O_RDONLY)
    try:
        if libc.setns(theirs, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns into Orthanc's network namespace failed")
        yield
    finally:
        libc.setns(own, CLONE_NEWNET)
        os.close(own)
        os.close(theirs)


def upload(server: Orthanc, files: list[Path]) -> None:
    """POST each file to Orthanc's REST API (inside its namespace)."""
    import requests
    with inside(server):
        for f in files:
            r = requests.post(f"{server.url}/instances", data=Path(f).read_bytes(), auth=(USER, PASSWORD), timeout=30)
            r.raise_for_status()
