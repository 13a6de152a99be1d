"""The DICOM SEG over its series in a real viewer, headless: the picture in docs/INFERENCE.md "PACS".

An ACDC validation volume, written as a DICOM MR series (``dicom_seg_demo.write_mr_series``), is uploaded to a
real Orthanc (``tests/orthanc.py``: Debian's ``orthanc`` + ``orthanc-dicomweb`` in a private network
namespace); ``smaformer predict`` reads the series from its DICOMweb URL and stores the SEG back (``--store``);
then OHIF, the prebuilt viewer of the npm package ``@ohif/app``, served here with a same-origin proxy to
Orthanc's DICOMweb (it adds the credentials), opens the study with the SEG in the viewport in headless Chromium,
which saves the screenshot. Nothing leaves the namespace; the OHIF folder is only read.

    npm pack @ohif/app@3.13.2 && tar xzf ohif-app-3.13.2.tgz          # the viewer: ./package/dist
    apt-get install -y orthanc orthanc-dicomweb chromium
    python benchmarks/pacs_viewer.py -c runs/accuracy/acdc_unet16-cpu-reduced/train/latest.pt \
        --ohif package/dist -o runs/pacs_viewer --png docs/img/pacs_ohif_seg.png
"""
from __future__ import annotations

import argparse
import http.server
import mimetypes
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

import h5py
import numpy as np
import requests

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]
import orthanc  # noqa: E402 - the tests' Orthanc helper, reused
from dicom_seg_demo import write_mr_series  # noqa: E402

DATA = Path(os.environ.get("SMAFORMER_SHARED", HERE.parents[1] / "shared")) / "data" / "acdc"
STUDY, SERIES = "1.2.3.4", "1.2.3.4.5"          # the UIDs write_mr_series gives
CONFIG = """localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour']));   // no onboarding tour
window.config = {
  routerBasename: '/', extensions: [], modes: [], showStudyList: true, disableConfirmationPrompts: true,
  investigationalUseDialog: {option: 'never'},
  showCPUFallbackMessage: false, showWarningMessageForCrossOrigin: false, maxNumberOfWebWorkers: 1,
  defaultDataSourceName: 'orthanc',
  dataSources: [{
    namespace: '@ohif/extension-default.dataSourcesModule.dicomweb', sourceName: 'orthanc',
    configuration: {
      friendlyName: 'Orthanc (smaformer test)', name: 'orthanc', wadoUriRoot: '/wado', qidoRoot: '/dicom-web',
      wadoRoot: '/dicom-web', qidoSupportsIncludeField: false, imageRendering: 'wadors',
      thumbnailRendering: 'wadors', enableStudyLazyLoad: true, supportsFuzzyMatching: false,
      supportsWildcard: true, omitQuotationForMultipartRequest: true, bulkDataURI: {enabled: true},
    },
  }],
};
// once the SEG is loaded over its series, show the slice through the centre of segment SEGMENT
(function jump(tries) {
  const s = window.services && window.services.segmentationService;
  const segs = s ? s.getSegmentations() : [];
  if (segs.length) {
    const viewport = window.services.viewportGridService.getActiveViewportId();
    return setTimeout(() => s.jumpToSegmentCenter(segs[0].segmentationId, SEGMENT, viewport), 3000);
  }
  if (tries < 600) setTimeout(() => jump(tries + 1), 100);
})(0);
"""


def serve(dist: Path, upstream: str, auth: tuple[str, str], config: str) -> http.server.ThreadingHTTPServer:
    """OHIF's files (``app-config.js`` replaced by ``config``; unknown paths get ``index.html``, as a single-page
    app needs) and ``/dicom-web``, ``/wado`` forwarded to Orthanc with the credentials, on a free port."""
    mimetypes.add_type("application/wasm", ".wasm")

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):      # quiet
            pass

        def do_GET(self):                  # noqa: N802 - the http.server name
            path = urllib.parse.urlsplit(self.path).path
            if path.startswith(("/dicom-web/", "/wado")):
                r = requests.get(upstream + self.path, auth=auth, timeout=60,
                                 headers={"Accept": self.headers.get("Accept", "*/*")})
                return self._send(r.status_code, r.headers.get("Content-Type", "application/octet-stream"),
                                  r.content)
            if path == "/app-config.js":
                return self._send(200, "application/javascript", config.encode())
            f = (dist / path.lstrip("/")).resolve()
            if not f.is_file() or dist not in f.parents:
                f = dist / "index.html"
            return self._send(200, mimetypes.guess_type(f.name)[0] or "application/octet-stream", f.read_bytes())

        def _send(self, status: int, ctype: str, body: bytes):
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-c", "--checkpoint", required=True)
    ap.add_argument("--ohif", type=Path, required=True, help="the prebuilt OHIF viewer (package/dist of @ohif/app)")
    ap.add_argument("--volume", type=Path, default=DATA / "volumes" / "patient002_frame01.h5")
    ap.add_argument("-o", "--out", type=Path, required=True, help="work folder (series, SEG, logs)")
    ap.add_argument("--png", type=Path, required=True)
    ap.add_argument("--segment", type=int, default=3, help="the viewer shows the slice through this segment's centre "
                    "(default 3: ACDC's left ventricle)")
    ap.add_argument("--wait", type=int, default=60, help="seconds of the viewer's virtual time before the shot")
    args = ap.parse_args()
    from smaformer.cli import main as cli
    from smaformer.errors import InputError
    from smaformer.io_utils import check_output

    dist = args.ohif.resolve()
    if not (dist / "index.html").is_file():
        sys.exit(f"error: {dist}: no index.html; give the dist folder of the @ohif/app npm package")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium or orthanc.why_not():
        sys.exit(f"error: {orthanc.why_not() or 'chromium is not installed'}")
    try:                # outputs checked before any work: never inside the viewer or the data, never a used folder
        for out, folder in ((args.out, True), (args.png, False)):
            check_output(out, folder=folder, inputs=[dist, args.volume])
        if args.out.is_dir() and any(args.out.iterdir()):
            raise InputError(args.out, "work folder is not empty; give a new one")
    except InputError as e:
        sys.exit(f"error: {e}")
    with h5py.File(args.volume, "r") as f:
        files = write_mr_series(np.asarray(f["image"]), args.out / "series")
    with tempfile.TemporaryDirectory(prefix="smaformer-orthanc-") as tmp:
        server = orthanc.start(Path(tmp))
        try:
            orthanc.upload(server, files)
            os.environ["SMAFORMER_PACS_USER"], os.environ["SMAFORMER_PACS_PASSWORD"] = orthanc.USER, orthanc.PASSWORD
            with orthanc.inside(server):
                url = f"{server.dicomweb}/studies/{STUDY}/series/{SERIES}"
                if cli(["predict", "-i", url, "-o", str(args.out / "seg.dcm"), "-c", args.checkpoint,
                        "--output-type", "dicom-seg", "--store", server.dicomweb, "--quiet"]) != 0:
                    return 1
                found = requests.get(f"{server.dicomweb}/studies/{STUDY}/series", params={"Modality": "SEG"},
                                     auth=(orthanc.USER, orthanc.PASSWORD), timeout=30).json()
                seg = found[0]["0020000E"]["Value"][0]
                proxy = serve(dist, server.url, (orthanc.USER, orthanc.PASSWORD),
                              CONFIG.replace("SEGMENT", str(args.segment)))
                view = (f"http://127.0.0.1:{proxy.server_address[1]}/viewer?StudyInstanceUIDs={STUDY}"
                        f"&initialSeriesInstanceUID={seg}")
                print(f"SEG series {seg} stored in study {STUDY}; opening {view}")
                args.png.parent.mkdir(parents=True, exist_ok=True)
                t0 = time.time()
                try:
                    shot = subprocess.run(
                        [chromium, "--headless=new", "--no-sandbox", "--hide-scrollbars", "--window-size=1400,860",
                         "--use-angle=swiftshader", "--enable-unsafe-swiftshader", f"--user-data-dir={tmp}/chromium",
                         f"--virtual-time-budget={args.wait * 1000}", f"--screenshot={args.png.resolve()}", view],
                        capture_output=True, text=True, timeout=600)
                finally:
                    proxy.shutdown()
                    proxy.server_close()
                (args.out / "chromium.log").write_text(shot.stdout + shot.stderr, encoding="utf-8")
                print(f"chromium exit {shot.returncode} in {time.time() - t0:.0f} s; screenshot {args.png}")
                return shot.returncode
        finally:
            orthanc.stop(server)


if __name__ == "__main__":
    sys.exit(main())
